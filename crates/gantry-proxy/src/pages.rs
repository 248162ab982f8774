//! The pages the proxy answers with itself when it cannot forward a request:
//! they name the host or service so that whoever sees one knows which part
//! is missing.

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};

use crate::body::ProxyBody;
use crate::exchange::Exchange;
use crate::forward::X_REQUEST_ID;

pub(crate) enum Page<'a> {
    /// The request cannot be routed as it is: two Host headers, a Host
    /// that differs from the authority, an encoded slash in the path.
    BadRequest { why: &'a str },
    /// CONNECT: the proxy is no forward proxy.
    MethodNotAllowed,
    /// No route matches the host and path.
    NoRoute { host: &'a str },
    /// Every upstream refused the connection, or the route has none.
    Unavailable { service: &'a str },
    /// The proxy is short of descriptors or memory: it could not open a
    /// connection to the service, which is not to blame.
    ProxyShort { service: &'a str },
    /// The upstream broke the connection or sent something that is not HTTP.
    BadGateway { service: &'a str },
    /// The upstream did not answer within the response timeout.
    GatewayTimeout { service: &'a str },
    /// A method other than GET or HEAD to a static site.
    ReadOnly { service: &'a str },
    /// No file at the path of a static site (and no `404.html` of its own).
    SiteNotFound { service: &'a str },
    /// The static site's directory is not there.
    SiteMissing { service: &'a str },
    /// The static site's files could not be read.
    SiteFailed { service: &'a str },
}

impl Page<'_> {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Page::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Page::MethodNotAllowed | Page::ReadOnly { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Page::NoRoute { .. } | Page::SiteNotFound { .. } => StatusCode::NOT_FOUND,
            Page::Unavailable { .. } | Page::ProxyShort { .. } | Page::SiteMissing { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Page::SiteFailed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            Page::BadGateway { .. } => StatusCode::BAD_GATEWAY,
            Page::GatewayTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn text(&self) -> (String, String) {
        match self {
            Page::BadRequest { why } => ("Bad request".to_owned(), escape(why)),
            Page::MethodNotAllowed => (
                "Method not allowed".to_owned(),
                "This proxy serves sites; it does not open tunnels (CONNECT).".to_owned(),
            ),
            Page::NoRoute { host } => (
                "No route".to_owned(),
                format!(
                    "Nothing is routed for the host <code>{}</code> at this path.",
                    escape(if host.is_empty() { "(none)" } else { host })
                ),
            ),
            Page::Unavailable { service } => (
                "Service unavailable".to_owned(),
                format!(
                    "The service <code>{}</code> is not running or not accepting connections. Try again in a moment.",
                    escape(service)
                ),
            ),
            Page::ProxyShort { service } => (
                "Service unavailable".to_owned(),
                format!(
                    "The proxy is short of resources and could not reach the service <code>{}</code>. Try again in a moment.",
                    escape(service)
                ),
            ),
            Page::BadGateway { service } => (
                "Bad gateway".to_owned(),
                format!(
                    "The service <code>{}</code> closed the connection without a valid response.",
                    escape(service)
                ),
            ),
            Page::GatewayTimeout { service } => (
                "Gateway timeout".to_owned(),
                format!(
                    "The service <code>{}</code> did not answer in time.",
                    escape(service)
                ),
            ),
            Page::ReadOnly { service } => (
                "Method not allowed".to_owned(),
                format!(
                    "The service <code>{}</code> serves files: only GET and HEAD.",
                    escape(service)
                ),
            ),
            Page::SiteNotFound { service } => (
                "Not found".to_owned(),
                format!(
                    "The service <code>{}</code> has no file at this path.",
                    escape(service)
                ),
            ),
            Page::SiteMissing { service } => (
                "Service unavailable".to_owned(),
                format!(
                    "The files of the service <code>{}</code> are not in place. Try again in a moment.",
                    escape(service)
                ),
            ),
            Page::SiteFailed { service } => (
                "Internal error".to_owned(),
                format!(
                    "The files of the service <code>{}</code> could not be read.",
                    escape(service)
                ),
            ),
        }
    }

    pub(crate) fn response(
        &self,
        request_id: &HeaderValue,
        mut exchange: Exchange,
    ) -> Response<ProxyBody> {
        let status = self.status();
        exchange.set_status(status);
        let (title, message) = self.text();
        let html = format!(
            "<!doctype html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>{code} {title}</title>\
             <style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;color:#222}}\
             small{{color:#777}}</style></head>\n<body>\n<h1>{code} {title}</h1>\n<p>{message}</p>\n\
             <p><small>gantry proxy · request {id}</small></p>\n</body>\n</html>\n",
            code = status.as_u16(),
            id = escape(request_id.to_str().unwrap_or("-")),
        );
        let mut response = Response::new(ProxyBody::page(Bytes::from(html), exchange));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(X_REQUEST_ID, request_id.clone());
        match self {
            Page::MethodNotAllowed => {
                headers.insert(
                    ALLOW,
                    HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
                );
            }
            Page::ReadOnly { .. } => {
                headers.insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            }
            _ => {}
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}

/// A 308 to the same URL over HTTPS: the method and body are kept.
pub(crate) fn redirect(
    location: HeaderValue,
    request_id: &HeaderValue,
    exchange: Exchange,
) -> Response<ProxyBody> {
    let status = StatusCode::PERMANENT_REDIRECT;
    relocated(
        status,
        "This site is served over HTTPS",
        location,
        request_id,
        exchange,
    )
}

/// A 301 to where a static site's directory is (its trailing slash).
pub(crate) fn moved(
    location: HeaderValue,
    request_id: &HeaderValue,
    exchange: Exchange,
) -> Response<ProxyBody> {
    let status = StatusCode::MOVED_PERMANENTLY;
    relocated(status, "This page is at", location, request_id, exchange)
}

fn relocated(
    status: StatusCode,
    why: &str,
    location: HeaderValue,
    request_id: &HeaderValue,
    mut exchange: Exchange,
) -> Response<ProxyBody> {
    exchange.set_status(status);
    let html = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>{code} {reason}</title></head>\n\
         <body>\n<p>{why}: <a href=\"{url}\">{url}</a></p>\n</body>\n</html>\n",
        code = status.as_u16(),
        reason = status.canonical_reason().unwrap_or(""),
        url = escape(location.to_str().unwrap_or("")),
    );
    let mut response = Response::new(ProxyBody::page(Bytes::from(html), exchange));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(LOCATION, location);
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(X_REQUEST_ID, request_id.clone());
    response
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_on_pages_are_escaped() {
        let (_, message) = Page::NoRoute { host: "<script>x" }.text();
        assert!(message.contains("&lt;script&gt;x"), "{message}");
    }
}
