//! Content codings: which one a client accepts (`Accept-Encoding`), which
//! files are worth compressing, and the streaming encoders for those
//! compressed on the fly. A precompressed sibling (`app.js.br`,
//! `app.js.gz`) is preferred to compressing, and brotli to gzip.

use std::pin::Pin;

use async_compression::Level;
use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder};
use http::HeaderMap;
use http::header::ACCEPT_ENCODING;
use tokio::io::{AsyncRead, BufReader};

/// Files smaller than this gain too little from compression.
pub(crate) const MIN_COMPRESS: u64 = 256;
/// The largest file compressed on the fly (a bound on the CPU one request
/// may take); larger ones are sent as they are unless a precompressed
/// sibling exists.
pub(crate) const MAX_COMPRESS: u64 = 8 * 1024 * 1024;
/// Brotli quality for compressing on the fly: fast, and still smaller than
/// gzip's default for text.
const BROTLI_QUALITY: i32 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Coding {
    Brotli,
    Gzip,
}

impl Coding {
    /// The `Content-Encoding` token.
    pub(crate) fn token(self) -> &'static str {
        match self {
            Coding::Brotli => "br",
            Coding::Gzip => "gzip",
        }
    }

    /// The extension of a precompressed sibling.
    pub(crate) fn extension(self) -> &'static str {
        match self {
            Coding::Brotli => "br",
            Coding::Gzip => "gz",
        }
    }

    /// `file` compressed as it is read.
    pub(crate) fn encoder(
        self,
        file: tokio::fs::File,
        size: u64,
    ) -> Pin<Box<dyn AsyncRead + Send>> {
        let reader = BufReader::with_capacity(64 * 1024, file);
        match self {
            Coding::Gzip => Box::pin(GzipEncoder::with_quality(reader, Level::Default)),
            Coding::Brotli => {
                // A window no larger than the file keeps memory per request small.
                let bits = (64 - size.max(1).leading_zeros()).clamp(10, 22);
                let params = async_compression::brotli::EncoderParams::default()
                    .quality(Level::Precise(BROTLI_QUALITY))
                    .window_size(i32::try_from(bits).unwrap_or(22))
                    .size_hint(usize::try_from(size).unwrap_or(usize::MAX))
                    .text_mode();
                Box::pin(BrotliEncoder::with_params(reader, params))
            }
        }
    }
}

/// The codings the client accepts, best first: brotli before gzip at equal
/// weight, nothing with `q=0`. `*` stands for any coding not named.
pub(crate) fn accepted(headers: &HeaderMap) -> Vec<Coding> {
    let mut weights: [Option<f32>; 2] = [None, None];
    let mut any: Option<f32> = None;
    for value in headers.get_all(ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else {
            continue;
        };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            match name.as_str() {
                "br" => weights[0] = Some(q),
                "gzip" | "x-gzip" => weights[1] = Some(q),
                "*" => any = Some(q),
                _ => {}
            }
        }
    }
    let mut codings: Vec<(Coding, f32)> = [Coding::Brotli, Coding::Gzip]
        .into_iter()
        .zip(weights)
        .filter_map(|(coding, q)| Some((coding, q.or(any)?)))
        .filter(|(_, q)| *q > 0.0)
        .collect();
    // A stable sort keeps brotli first at equal weight.
    codings.sort_by(|a, b| b.1.total_cmp(&a.1));
    codings.into_iter().map(|(c, _)| c).collect()
}

/// Types that compress well: text, JSON, XML, SVG, JavaScript, WebAssembly.
pub(crate) fn compressible(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.starts_with("text/")
        || essence.ends_with("+json")
        || essence.ends_with("+xml")
        || matches!(
            essence,
            "application/javascript"
                | "application/json"
                | "application/xml"
                | "application/wasm"
                | "image/svg+xml"
                | "image/x-icon"
                | "font/ttf"
                | "font/otf"
        )
}

/// The `Content-Type` for a file name; UTF-8 for text.
pub(crate) fn content_type(name: &str) -> String {
    let guess = mime_guess::from_path(name).first_raw();
    match guess {
        Some(essence) if essence.starts_with("text/") || essence == "application/javascript" => {
            format!("{essence}; charset=utf-8")
        }
        Some(essence) => essence.to_owned(),
        None => "application/octet-stream".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn accept(value: &'static str) -> Vec<Coding> {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT_ENCODING, HeaderValue::from_static(value));
        accepted(&headers)
    }

    #[test]
    fn brotli_is_preferred_unless_weighed_lower() {
        assert_eq!(accept("gzip, deflate, br"), [Coding::Brotli, Coding::Gzip]);
        assert_eq!(accept("br;q=0.5, gzip"), [Coding::Gzip, Coding::Brotli]);
        assert_eq!(accept("gzip"), [Coding::Gzip]);
        assert_eq!(accept("br;q=0, gzip;q=0"), []);
        assert_eq!(accept("identity"), []);
        assert_eq!(accept("*"), [Coding::Brotli, Coding::Gzip]);
        assert_eq!(accept("*, br;q=0"), [Coding::Gzip]);
        assert!(accepted(&HeaderMap::new()).is_empty());
    }

    #[test]
    fn text_compresses_and_images_do_not() {
        assert!(compressible("text/html; charset=utf-8"));
        assert!(compressible("application/javascript; charset=utf-8"));
        assert!(compressible("application/manifest+json"));
        assert!(compressible("image/svg+xml"));
        assert!(!compressible("image/png"));
        assert!(!compressible("application/octet-stream"));
    }

    #[test]
    fn types_come_from_the_extension() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(
            content_type("app.3f2a9c1e.js"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type("logo.png"), "image/png");
        assert_eq!(content_type("README"), "application/octet-stream");
    }
}
