//! A `static` route: the proxy serves a directory itself. GET and HEAD
//! only; a directory serves its `index.html`; strong `ETag`s and
//! `Last-Modified` with 304s; one byte range per request (206, or 416 when
//! it cannot be met; several ranges get the whole file); precompressed
//! `.br` and `.gz` siblings, or brotli and gzip on the fly for text up to
//! `encoding::MAX_COMPRESS`; a year's `immutable` caching for hashed file
//! names and revalidation for everything else (`cache`); an optional
//! single-page-app fallback; the root's `404.html`, or the proxy's page,
//! for what is not there; the proxy's 503 when it is itself short of
//! descriptors or memory to open the files with (`shortage`).
//!
//! Must never: serve anything outside the root (`resolve`), read a whole
//! file into memory, or block a worker (files are opened and examined under
//! `spawn_blocking`, then streamed by `tokio::fs`).

mod cache;
mod encoding;
mod resolve;

use std::io::{Seek as _, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

use http::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE,
    ETAG, LAST_MODIFIED, RANGE, VARY, X_CONTENT_TYPE_OPTIONS,
};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use tokio::io::AsyncReadExt as _;

use crate::body::ProxyBody;
use crate::exchange::Exchange;
use crate::forward::X_REQUEST_ID;
use crate::pages::{self, Page};
use crate::table::StaticSite;
use encoding::Coding;
use resolve::{Found, Root};

/// The longest path, decoded, that is looked up; longer ones are not found.
const MAX_PATH: usize = 4096;
/// The longest name of one segment on Linux file systems.
const MAX_SEGMENT: usize = 255;
/// The only dot-directory served: everything else starting with `.` (a
/// `.git` or `.env` left in a build) is hidden.
const WELL_KNOWN: &str = ".well-known";

/// A route's directory, ready to serve.
pub(crate) struct Site {
    root: PathBuf,
    spa: bool,
}

impl Site {
    pub(crate) fn new(site: &StaticSite) -> Site {
        Site {
            root: site.root.clone(),
            spa: site.spa,
        }
    }
}

/// What a request asks of a site.
pub(crate) struct Ask<'a> {
    pub(crate) method: &'a Method,
    pub(crate) headers: &'a HeaderMap,
    /// The path inside the site (the route's prefix stripped when the route
    /// strips it), normalised and still percent-encoded.
    pub(crate) path: &'a str,
    /// The request's path and query as the client sent them (normalised):
    /// where a directory's redirect to its trailing slash goes.
    pub(crate) request_path: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) service: &'a str,
    pub(crate) request_id: &'a HeaderValue,
}

/// Answers `ask` from `site`.
pub(crate) async fn serve(
    site: Arc<Site>,
    ask: Ask<'_>,
    mut exchange: Exchange,
) -> Response<ProxyBody> {
    if ask.method != Method::GET && ask.method != Method::HEAD {
        let page = Page::ReadOnly {
            service: ask.service,
        };
        return page.response(ask.request_id, exchange);
    }
    let (headers, path, head) = (
        ask.headers.clone(),
        ask.path.to_owned(),
        ask.method == Method::HEAD,
    );
    let planned = tokio::task::spawn_blocking(move || plan(&site, &headers, &path, head)).await;
    let service = ask.service;
    let plan = match planned {
        Ok(plan) => plan,
        Err(_) => Plan::Failed,
    };
    match plan {
        Plan::Reply(reply) => {
            exchange.set_status(reply.status);
            let body = match reply.body {
                None => ProxyBody::file_done(exchange),
                Some(source) => source.body(exchange),
            };
            let mut response = Response::new(body);
            *response.status_mut() = reply.status;
            *response.headers_mut() = reply.headers;
            response
                .headers_mut()
                .insert(X_REQUEST_ID, ask.request_id.clone());
            response
        }
        Plan::Slash => {
            let location = slash_location(ask.request_path, ask.query);
            match HeaderValue::try_from(location) {
                Ok(location) => pages::moved(location, ask.request_id, exchange),
                Err(_) => Page::SiteNotFound { service }.response(ask.request_id, exchange),
            }
        }
        Plan::NotFound => Page::SiteNotFound { service }.response(ask.request_id, exchange),
        Plan::RootMissing => Page::SiteMissing { service }.response(ask.request_id, exchange),
        Plan::ProxyShort(error) => {
            crate::shortage::record(("service", service.to_owned()), &error);
            Page::ProxyShort { service }.response(ask.request_id, exchange)
        }
        Plan::Failed => Page::SiteFailed { service }.response(ask.request_id, exchange),
    }
}

/// A directory asked without its trailing slash goes to the one with it
/// (so that its page's relative links work). Runs of slashes are folded:
/// `//evil.example` must not become a redirect to another site.
fn slash_location(path: &str, query: Option<&str>) -> String {
    let mut location = String::with_capacity(path.len() + 2);
    for c in path.chars() {
        if !(c == '/' && location.ends_with('/')) {
            location.push(c);
        }
    }
    if !location.ends_with('/') {
        location.push('/');
    }
    if let Some(query) = query {
        location.push('?');
        location.push_str(query);
    }
    location
}

enum Plan {
    Reply(Reply),
    /// A directory asked without its trailing slash.
    Slash,
    NotFound,
    /// The root directory is not there (a release not yet or no longer in place).
    RootMissing,
    /// The proxy could not open the files for want of its own descriptors
    /// or memory (`shortage`): the site is not to blame, and trying again
    /// later may work.
    ProxyShort(std::io::Error),
    /// Reading failed for another reason than absence.
    Failed,
}

impl Plan {
    /// What a failure to open or examine the site's files comes to.
    fn failed(error: std::io::Error) -> Plan {
        if crate::shortage::is_proxys_own(&error) {
            Plan::ProxyShort(error)
        } else {
            Plan::Failed
        }
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    /// None for HEAD, 304 and 416.
    body: Option<Source>,
}

/// The bytes to send: from an open file, positioned at its first byte.
struct Source {
    file: std::fs::File,
    /// How many bytes to send, or None when compressed as it is read.
    length: Option<u64>,
    /// Compressed on the fly, with the file's size as a hint.
    compress: Option<(Coding, u64)>,
}

impl Source {
    fn body(self, exchange: Exchange) -> ProxyBody {
        let file = tokio::fs::File::from_std(self.file);
        match (self.compress, self.length) {
            (Some((coding, size)), _) => {
                ProxyBody::file(coding.encoder(file, size), None, exchange)
            }
            (None, length) => {
                let length = length.unwrap_or(0);
                ProxyBody::file(Box::pin(file.take(length)), Some(length), exchange)
            }
        }
    }
}

/// The request's path as segments to look up, and whether it named a
/// directory (a trailing slash); None when it cannot name a served file.
fn relative_path(path: &str) -> Option<(String, bool)> {
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .ok()?;
    if decoded.len() > MAX_PATH || decoded.contains(['\0', '\\']) {
        return None;
    }
    let mut relative = String::with_capacity(decoded.len());
    for segment in decoded.split('/').filter(|s| !s.is_empty()) {
        let hidden = segment.starts_with('.') && segment != WELL_KNOWN;
        if hidden || segment.len() > MAX_SEGMENT {
            return None;
        }
        if !relative.is_empty() {
            relative.push('/');
        }
        relative.push_str(segment);
    }
    Some((relative, decoded.ends_with('/')))
}

fn last_segment(relative: &str) -> &str {
    relative.rsplit('/').next().unwrap_or(relative)
}

fn plan(site: &Site, headers: &HeaderMap, path: &str, head: bool) -> Plan {
    let mut root = match Root::open(&site.root) {
        Ok(root) => root,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Plan::RootMissing,
        Err(e) => return Plan::failed(e),
    };
    let planned = (|| {
        let Some((relative, directory)) = relative_path(path) else {
            return missing(site, &mut root, headers, head, "");
        };
        match root.find(&relative)? {
            Found::File(file, metadata) if !directory => {
                let asked = Asked::new(&relative, headers, head, StatusCode::OK);
                Ok(Plan::Reply(reply(&mut root, file, &metadata, &asked)?))
            }
            Found::Directory if !directory && !relative.is_empty() => Ok(Plan::Slash),
            Found::Directory => {
                let index = if relative.is_empty() {
                    "index.html".to_owned()
                } else {
                    format!("{relative}/index.html")
                };
                match root.find(&index)? {
                    Found::File(file, metadata) => {
                        let asked = Asked::new(&index, headers, head, StatusCode::OK);
                        Ok(Plan::Reply(reply(&mut root, file, &metadata, &asked)?))
                    }
                    _ => missing(site, &mut root, headers, head, &relative),
                }
            }
            Found::File(..) | Found::Nothing => missing(site, &mut root, headers, head, &relative),
        }
    })();
    planned.unwrap_or_else(Plan::failed)
}

/// Nothing at the path: the app's `index.html` for a single-page app's
/// route (no extension in the last segment), else the root's `404.html`
/// (status 404), else the proxy's page.
fn missing(
    site: &Site,
    root: &mut Root,
    headers: &HeaderMap,
    head: bool,
    relative: &str,
) -> std::io::Result<Plan> {
    if site.spa
        && !last_segment(relative).contains('.')
        && let Found::File(file, metadata) = root.find("index.html")?
    {
        let asked = Asked::new("index.html", headers, head, StatusCode::OK);
        return Ok(Plan::Reply(reply(root, file, &metadata, &asked)?));
    }
    if let Found::File(file, metadata) = root.find("404.html")? {
        let asked = Asked::new("404.html", headers, head, StatusCode::NOT_FOUND);
        return Ok(Plan::Reply(reply(root, file, &metadata, &asked)?));
    }
    Ok(Plan::NotFound)
}

/// One file about to be answered.
struct Asked<'a> {
    /// Its path under the root (siblings are found beside it).
    relative: &'a str,
    headers: &'a HeaderMap,
    head: bool,
    /// 200, or 404 for the root's `404.html` (then no 304 and no range).
    status: StatusCode,
}

impl<'a> Asked<'a> {
    fn new(relative: &'a str, headers: &'a HeaderMap, head: bool, status: StatusCode) -> Self {
        Asked {
            relative,
            headers,
            head,
            status,
        }
    }
}

/// Which bytes represent the file in the answer.
enum Representation {
    Identity,
    /// A precompressed sibling (`name.br`, `name.gz`).
    Sibling(Coding, std::fs::File, std::fs::Metadata),
    OnTheFly(Coding),
}

fn reply(
    root: &mut Root,
    mut file: std::fs::File,
    metadata: &std::fs::Metadata,
    asked: &Asked<'_>,
) -> std::io::Result<Reply> {
    let name = last_segment(asked.relative);
    let content_type = encoding::content_type(name);
    let modified = cache::modified(metadata);
    let size = metadata.len();
    let identity_tag = cache::etag(metadata, None);
    let found = asked.status == StatusCode::OK;
    let range = asked
        .headers
        .get(RANGE)
        .filter(|_| found && cache::range_allowed(asked.headers, &identity_tag, modified))
        .and_then(|r| r.to_str().ok());

    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, value(&content_type));
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static(cache::cache_control(name, &content_type)),
    );
    headers.insert(LAST_MODIFIED, value(&httpdate::fmt_http_date(modified)));
    headers.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));

    let representation = if range.is_some() {
        Representation::Identity
    } else {
        choose(root, asked, &content_type, size)?
    };
    let etag = match &representation {
        Representation::Identity => identity_tag,
        Representation::Sibling(coding, _, sibling) => cache::etag(sibling, Some(coding.token())),
        Representation::OnTheFly(coding) => cache::etag(metadata, Some(coding.token())),
    };
    headers.insert(ETAG, value(&etag));
    if found && cache::not_modified(asked.headers, &etag, modified) {
        return Ok(Reply {
            status: StatusCode::NOT_MODIFIED,
            headers: without_content(headers),
            body: None,
        });
    }

    if let Some(range) = range
        && let Some(ranged) = ranged(range, size)
    {
        return Ok(match ranged {
            Ranged::Part(start, end) => {
                let length = end - start + 1;
                headers.insert(CONTENT_RANGE, value(&format!("bytes {start}-{end}/{size}")));
                headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
                file.seek(SeekFrom::Start(start))?;
                Reply {
                    status: StatusCode::PARTIAL_CONTENT,
                    headers,
                    body: (!asked.head).then_some(Source {
                        file,
                        length: Some(length),
                        compress: None,
                    }),
                }
            }
            Ranged::Unsatisfiable => {
                let mut headers = without_content(headers);
                headers.insert(CONTENT_RANGE, value(&format!("bytes */{size}")));
                headers.insert(CONTENT_LENGTH, HeaderValue::from(0));
                Reply {
                    status: StatusCode::RANGE_NOT_SATISFIABLE,
                    headers,
                    body: None,
                }
            }
        });
    }

    let source = match representation {
        Representation::Identity => {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(size));
            Source {
                file,
                length: Some(size),
                compress: None,
            }
        }
        Representation::Sibling(coding, sibling, sibling_metadata) => {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static(coding.token()));
            headers.insert(CONTENT_LENGTH, HeaderValue::from(sibling_metadata.len()));
            Source {
                file: sibling,
                length: Some(sibling_metadata.len()),
                compress: None,
            }
        }
        Representation::OnTheFly(coding) => {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static(coding.token()));
            Source {
                file,
                length: None,
                compress: Some((coding, size)),
            }
        }
    };
    Ok(Reply {
        status: asked.status,
        headers,
        body: (!asked.head).then_some(source),
    })
}

/// The best coding the client takes: a precompressed sibling first, in the
/// client's order, then compressing on the fly when the type is worth it
/// and the size within bounds.
fn choose(
    root: &mut Root,
    asked: &Asked<'_>,
    content_type: &str,
    size: u64,
) -> std::io::Result<Representation> {
    let accepted = encoding::accepted(asked.headers);
    for &coding in &accepted {
        let sibling = format!("{}.{}", asked.relative, coding.extension());
        if let Found::File(file, metadata) = root.find(&sibling)? {
            return Ok(Representation::Sibling(coding, file, metadata));
        }
    }
    let worth_it = encoding::compressible(content_type)
        && (encoding::MIN_COMPRESS..=encoding::MAX_COMPRESS).contains(&size);
    Ok(match accepted.first() {
        Some(&coding) if worth_it => Representation::OnTheFly(coding),
        _ => Representation::Identity,
    })
}

enum Ranged {
    /// First and last byte, inclusive.
    Part(u64, u64),
    Unsatisfiable,
}

/// One satisfiable range is served; none satisfiable is a 416; anything
/// else (several ranges, a header that does not parse, an empty file) gets
/// the whole file, as RFC 9110 allows.
fn ranged(header: &str, size: u64) -> Option<Ranged> {
    use http_range_header::RangeUnsatisfiableError;
    let parsed = http_range_header::parse_range_header(header).ok()?;
    match parsed.validate(size) {
        Ok(ranges) if ranges.len() == 1 => {
            let range = ranges.first()?;
            Some(Ranged::Part(*range.start(), *range.end()))
        }
        Ok(_) => None,
        Err(RangeUnsatisfiableError::Unsatisfiable) => Some(Ranged::Unsatisfiable),
        Err(_) => None,
    }
}

/// A 304's or 416's headers: no body, so nothing that describes one.
fn without_content(mut headers: HeaderMap) -> HeaderMap {
    headers.remove(CONTENT_TYPE);
    headers.remove(CONTENT_LENGTH);
    headers.remove(ACCEPT_RANGES);
    headers.remove(X_CONTENT_TYPE_OPTIONS);
    headers
}

/// Header values made here from ASCII only (types, dates, tags, ranges).
fn value(text: &str) -> HeaderValue {
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_decoded_once_and_hidden_or_odd_names_are_refused() {
        let rel = |p: &str| relative_path(p).map(|(r, _)| r);
        assert_eq!(rel("/assets/app.js").as_deref(), Some("assets/app.js"));
        assert_eq!(rel("/a%20b/%C3%A9.txt").as_deref(), Some("a b/é.txt"));
        assert_eq!(rel("//a///b").as_deref(), Some("a/b"));
        assert_eq!(rel("/").as_deref(), Some(""));
        assert_eq!(
            rel("/%252e%252e/x").as_deref(),
            Some("%2e%2e/x"),
            "decoded once"
        );
        assert_eq!(
            rel("/.well-known/security.txt").as_deref(),
            Some(".well-known/security.txt")
        );
        for refused in [
            "/.git/config",
            "/a/.env",
            "/..",
            "/a/%2e%2e",
            "/a%5cb",
            "/%FF",
        ] {
            assert_eq!(rel(refused), None, "{refused}");
        }
        assert_eq!(rel(&format!("/{}", "a".repeat(256))), None);
        assert_eq!(relative_path("/docs/").map(|(_, d)| d), Some(true));
        assert_eq!(relative_path("/docs").map(|(_, d)| d), Some(false));
    }

    #[test]
    fn a_directory_redirect_never_leaves_the_site() {
        assert_eq!(slash_location("/docs", None), "/docs/");
        assert_eq!(slash_location("/docs", Some("a=1")), "/docs/?a=1");
        assert_eq!(slash_location("//evil.example", None), "/evil.example/");
    }

    #[test]
    fn one_range_is_served_and_others_fall_back() {
        let part = |h: &str, size| match ranged(h, size) {
            Some(Ranged::Part(a, b)) => Some((a, b)),
            _ => None,
        };
        assert_eq!(part("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(part("bytes=90-", 100), Some((90, 99)));
        assert_eq!(part("bytes=-10", 100), Some((90, 99)));
        assert_eq!(part("bytes=50-500", 100), Some((50, 99)));
        assert!(matches!(
            ranged("bytes=100-", 100),
            Some(Ranged::Unsatisfiable)
        ));
        assert!(
            ranged("bytes=0-1,5-6", 100).is_none(),
            "several: whole file"
        );
        assert!(ranged("lines=1-2", 100).is_none());
        assert!(ranged("bytes=5-1", 100).is_none());
    }
}
