//! Time as the hub stores it (milliseconds since the Unix epoch, BIGINT in
//! both databases) and as the API shows it (RFC 3339, UTC).

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Now, in milliseconds since the Unix epoch.
pub fn now() -> i64 {
    i64::try_from(gantry_core::clock::now_ms()).unwrap_or(i64::MAX)
}

/// `2026-12-06T11:50:00.123Z`.
pub fn format(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// An RFC 3339 time, as `since` takes it.
pub fn parse(text: &str) -> Option<i64> {
    if text.len() > 64 {
        return None;
    }
    let t = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_through_rfc3339() {
        let ms = 1_796_558_400_123;
        assert_eq!(format(ms), "2026-12-06T12:00:00.123Z");
        assert_eq!(parse(&format(ms)), Some(ms));
        assert_eq!(parse("yesterday"), None);
    }
}
