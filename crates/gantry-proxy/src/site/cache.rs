//! How long a browser may keep a file, and how it asks again: the
//! `Cache-Control` rule for hashed names, strong `ETag`s, `Last-Modified`,
//! and the conditional headers that turn a request into a 304 or ignore
//! its `Range`. Pure functions of the file's metadata and the request.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use http::header::{IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE};
use sha2::{Digest as _, Sha256};

/// A hashed file never changes under its name: a year, and no revalidation.
pub(crate) const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// Anything else may change with the next release: kept, but asked again
/// (a 304 when it has not changed).
pub(crate) const REVALIDATE: &str = "no-cache";

/// The `Cache-Control` of a file served under `name` (its last segment)
/// with `content_type`. HTML is always revalidated, since it names the
/// hashed files of its own release.
pub(crate) fn cache_control(name: &str, content_type: &str) -> &'static str {
    if !content_type.starts_with("text/html") && is_hashed(name) {
        IMMUTABLE
    } else {
        REVALIDATE
    }
}

/// Whether a file name carries a content hash, as bundlers write them:
/// `app.3f2a9c1e.js` (webpack, Parcel), `chunk-5XK2QF7M.js` (esbuild),
/// `index-B7x_2kQa.js` (Vite, Rollup). The name is split on `.` and `-`;
/// some part after the first, 8 to 64 characters long, must be
/// - lowercase hexadecimal with at least one digit and one letter, or
/// - uppercase letters and digits, with at least one of each, or
/// - letters, digits and `_` with at least one digit, one lowercase and one
///   uppercase letter.
///
/// Words (`bootstrap-min.js`, `v2legacy`) and dates (`20240101`) do not
/// match. A hash without a digit (possible with Vite) is missed: that file
/// is only revalidated, never kept too long.
pub(crate) fn is_hashed(name: &str) -> bool {
    name.split(['.', '-']).skip(1).any(looks_like_hash)
}

fn looks_like_hash(part: &str) -> bool {
    if !(8..=64).contains(&part.len()) {
        return false;
    }
    let has = |f: fn(&u8) -> bool| part.as_bytes().iter().any(f);
    let all = |f: fn(&u8) -> bool| part.as_bytes().iter().all(f);
    let digit = has(u8::is_ascii_digit);
    let hex_lower = all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
    let upper_alnum = all(|b| b.is_ascii_digit() || b.is_ascii_uppercase());
    let word = all(|b| b.is_ascii_alphanumeric() || *b == b'_');
    digit
        && ((hex_lower && has(u8::is_ascii_lowercase))
            || (upper_alnum && has(u8::is_ascii_uppercase))
            || (word && has(u8::is_ascii_lowercase) && has(u8::is_ascii_uppercase)))
}

/// A strong validator for one file as stored: a digest of its device,
/// inode, size and modification time (nanoseconds), so that a release
/// whose file has the same size and time but is another file gets another
/// tag. `variant` tells encodings of one file apart (`br`, `gzip`).
pub(crate) fn etag(metadata: &Metadata, variant: Option<&str>) -> String {
    let mut digest = Sha256::new();
    digest.update(metadata.dev().to_le_bytes());
    digest.update(metadata.ino().to_le_bytes());
    digest.update(metadata.size().to_le_bytes());
    digest.update(metadata.mtime().to_le_bytes());
    digest.update(metadata.mtime_nsec().to_le_bytes());
    let hash = digest.finalize();
    let hex: String = hash[..12].iter().map(|b| format!("{b:02x}")).collect();
    match variant {
        Some(variant) => format!("\"{hex}-{variant}\""),
        None => format!("\"{hex}\""),
    }
}

/// The modification time, whole seconds (what HTTP dates carry).
pub(crate) fn modified(metadata: &Metadata) -> SystemTime {
    let secs = u64::try_from(metadata.mtime()).unwrap_or(0);
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// RFC 9110 13.2.2 for GET and HEAD: `If-None-Match` when the request has
/// one (weak comparison, `*` matches), else `If-Modified-Since`.
pub(crate) fn not_modified(headers: &HeaderMap, etag: &str, modified: SystemTime) -> bool {
    if let Some(tags) = headers.get(IF_NONE_MATCH) {
        let Ok(tags) = tags.to_str() else {
            return false;
        };
        return tags.split(',').map(str::trim).any(|tag| {
            tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag.trim_start_matches("W/")
        });
    }
    headers
        .get(IF_MODIFIED_SINCE)
        .and_then(|since| httpdate::parse_http_date(since.to_str().ok()?).ok())
        .is_some_and(|since| modified <= since)
}

/// Whether a `Range` may be honoured: no `If-Range`, or one that names this
/// very file (its strong tag, or exactly its date).
pub(crate) fn range_allowed(headers: &HeaderMap, etag: &str, modified: SystemTime) -> bool {
    let Some(condition) = headers.get(IF_RANGE) else {
        return true;
    };
    let Ok(condition) = condition.to_str() else {
        return false;
    };
    if condition.starts_with('"') {
        return condition == etag;
    }
    httpdate::parse_http_date(condition).is_ok_and(|date| date == modified)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn bundler_hashes_are_recognised_and_words_are_not() {
        for hashed in [
            "app.3f2a9c1e.js",
            "main.3f2a9c1e4b5d6f70.css",
            "chunk-5XK2QF7M.js",
            "index-B7x_2kQa.js",
            "framework-0a1b2c3d4e5f6789.js",
            "logo.a1b2c3d4.svg",
        ] {
            assert!(is_hashed(hashed), "{hashed} is hashed");
        }
        for plain in [
            "app.js",
            "index.html",
            "bootstrap-min.js",
            "jquery-3.7.1.min.js",
            "app-v2legacy.js",
            "report-20240101.pdf",
            "deadbeefcafe.js",
            "a1b2c3d4e5.js",
            "app.deadbeef.js",
            "App-MainPage.js",
            "favicon.ico",
        ] {
            assert!(!is_hashed(plain), "{plain} is not hashed");
        }
    }

    #[test]
    fn html_is_revalidated_even_with_a_hash() {
        assert_eq!(
            cache_control("app.3f2a9c1e.js", "text/javascript"),
            IMMUTABLE
        );
        assert_eq!(
            cache_control("page.3f2a9c1e.html", "text/html; charset=utf-8"),
            REVALIDATE
        );
        assert_eq!(cache_control("app.js", "text/javascript"), REVALIDATE);
    }

    fn headers(name: http::HeaderName, value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn if_none_match_compares_weakly_and_wins_over_the_date() {
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let tag = "\"abc\"";
        assert!(not_modified(&headers(IF_NONE_MATCH, "\"abc\""), tag, at));
        assert!(not_modified(
            &headers(IF_NONE_MATCH, "\"x\", W/\"abc\""),
            tag,
            at
        ));
        assert!(not_modified(&headers(IF_NONE_MATCH, "*"), tag, at));
        assert!(!not_modified(&headers(IF_NONE_MATCH, "\"abd\""), tag, at));
        let mut both = headers(IF_NONE_MATCH, "\"other\"");
        both.insert(
            IF_MODIFIED_SINCE,
            HeaderValue::from_static("Tue, 14 Nov 2023 22:13:20 GMT"),
        );
        assert!(!not_modified(&both, tag, at), "the tag decides");
    }

    #[test]
    fn if_modified_since_is_by_whole_seconds() {
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let same = headers(IF_MODIFIED_SINCE, "Tue, 14 Nov 2023 22:13:20 GMT");
        let before = headers(IF_MODIFIED_SINCE, "Tue, 14 Nov 2023 22:13:19 GMT");
        assert!(not_modified(&same, "\"t\"", at));
        assert!(!not_modified(&before, "\"t\"", at));
        assert!(!not_modified(
            &headers(IF_MODIFIED_SINCE, "yesterday"),
            "\"t\"",
            at
        ));
    }

    #[test]
    fn if_range_needs_the_strong_tag_or_the_exact_date() {
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert!(range_allowed(&HeaderMap::new(), "\"t\"", at));
        assert!(range_allowed(&headers(IF_RANGE, "\"t\""), "\"t\"", at));
        assert!(!range_allowed(&headers(IF_RANGE, "W/\"t\""), "\"t\"", at));
        assert!(!range_allowed(&headers(IF_RANGE, "\"u\""), "\"t\"", at));
        assert!(range_allowed(
            &headers(IF_RANGE, "Tue, 14 Nov 2023 22:13:20 GMT"),
            "\"t\"",
            at
        ));
    }
}
