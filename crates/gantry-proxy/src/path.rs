//! A request path as the proxy routes and forwards it: normalised per RFC
//! 3986 (6.2.2), so that `/api/../admin` is routed as `/admin` and the
//! upstream sees the path it was routed on. Percent-encoded unreserved
//! characters are decoded (`%2E` is a dot), other escapes get uppercase
//! hex, and dot segments are removed (5.2.4). An encoded slash, backslash
//! or NUL is refused: an upstream that decodes it would see other segments
//! than the proxy routed on.

use std::borrow::Cow;

/// Why a path is refused (the 400 page says it).
pub(crate) const ENCODED_SEPARATOR: &str =
    "the path has an encoded slash, backslash or NUL (%2F, %5C, %00)";

/// The normalised form of `path`, or why it is refused.
pub(crate) fn normalize(path: &str) -> Result<Cow<'_, str>, &'static str> {
    // `*` (OPTIONS) and anything not absolute is left as it is.
    if !path.starts_with('/') {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    if !has_dot_segment(&decoded) {
        return Ok(decoded);
    }
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

fn decode_unreserved(path: &str) -> Result<Cow<'_, str>, &'static str> {
    if !path.contains('%') {
        return Ok(Cow::Borrowed(path));
    }
    let bytes = path.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| Some((hex(*bytes.get(i + 1)?)?, hex(*bytes.get(i + 2)?)?)))
            .flatten();
        let Some((high, low)) = escaped else {
            out.push(bytes[i]);
            i += 1;
            continue;
        };
        let byte = high << 4 | low;
        if matches!(byte, b'/' | b'\\' | 0) {
            return Err(ENCODED_SEPARATOR);
        }
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(high)], HEX[usize::from(low)]]);
        }
        i += 3;
    }
    // Only ASCII escapes were replaced, by ASCII: the bytes are still UTF-8.
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| ENCODED_SEPARATOR)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|s| s == "." || s == "..")
}

/// RFC 3986 5.2.4 for an absolute path: `.` segments go, `..` takes the
/// segment before it (never above the root).
fn remove_dot_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len().saturating_sub(1);
    let mut ends_in_dir = false;
    for (i, segment) in segments.into_iter().enumerate() {
        match segment {
            "." => ends_in_dir = i == last,
            ".." => {
                kept.pop();
                ends_in_dir = i == last;
            }
            segment => {
                kept.push(segment);
                ends_in_dir = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if ends_in_dir || out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normal(path: &str) -> String {
        normalize(path).expect("accepted").into_owned()
    }

    #[test]
    fn dot_segments_are_removed_and_never_climb_above_the_root() {
        assert_eq!(normal("/api/../admin"), "/admin");
        assert_eq!(normal("/api/./x/../y"), "/api/y");
        assert_eq!(normal("/../../etc"), "/etc");
        assert_eq!(normal("/a/b/.."), "/a/");
        assert_eq!(normal("/a/."), "/a/");
        assert_eq!(normal("/.."), "/");
        assert_eq!(normal("/a//b"), "/a//b");
        assert_eq!(normal("/a/..b/c"), "/a/..b/c");
    }

    #[test]
    fn encoded_dots_count_and_encoded_separators_are_refused() {
        assert_eq!(normal("/api/%2e%2E/admin"), "/admin");
        assert_eq!(normal("/%61pi/x%20y%7e"), "/api/x%20y~");
        assert_eq!(normal("/a/%c3%a9"), "/a/%C3%A9");
        assert_eq!(normal("/100%"), "/100%");
        assert_eq!(normalize("/api%2F..%2Fadmin"), Err(ENCODED_SEPARATOR));
        assert_eq!(normalize("/api/..%5cadmin"), Err(ENCODED_SEPARATOR));
        assert_eq!(normalize("/a%00"), Err(ENCODED_SEPARATOR));
    }

    #[test]
    fn a_plain_path_is_not_copied() {
        assert!(matches!(normalize("/api/users"), Ok(Cow::Borrowed(_))));
        assert_eq!(normal("*"), "*");
    }
}
