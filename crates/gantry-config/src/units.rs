//! Typed values written as strings in gantry.toml: durations ("500ms", "30s")
//! and sizes ("256M", "1G"). Each parses once, prints back in the shortest
//! exact form, and names its format in the JSON Schema so the schema validator
//! and the loader agree on what is valid.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A length of time: a whole number followed by `ms`, `s`, `m`, `h` or `d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(std::time::Duration);

/// Why a duration or size string did not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct UnitError {
    pub reason: String,
}

impl UnitError {
    fn new(reason: impl Into<String>) -> Self {
        UnitError {
            reason: reason.into(),
        }
    }
}

const DURATION_UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

impl Duration {
    /// The longest duration gantry.toml takes, 365 days: more is a slip
    /// (a wait or an interval that would never end), not a setting. Only
    /// gantry.toml's check holds it ([`Duration::parse_in_config`]): what
    /// was stored or sent before stays readable.
    pub const MAX: Duration = Duration::from_millis(365 * 86_400_000);

    /// A duration as gantry.toml may write it: well formed, at most
    /// [`Duration::MAX`].
    pub fn parse_in_config(text: &str) -> Result<Duration, UnitError> {
        let duration: Duration = text.parse()?;
        if duration > Duration::MAX {
            return Err(UnitError::new(format!(
                "`{}` is longer than {}, the longest time gantry.toml takes",
                text.trim(),
                Duration::MAX
            )));
        }
        Ok(duration)
    }

    pub const fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }

    pub fn as_std(self) -> std::time::Duration {
        self.0
    }

    pub fn as_millis(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }

    /// The hint shown when a duration is malformed.
    pub const HINT: &'static str = "write a whole number followed by a unit: ms, s, m, h or d, like \"500ms\" or \"30s\", at most 365d";
}

/// Splits "30s" into (30, "s"); the number part must be ASCII digits.
fn split_number(text: &str) -> Result<(u64, &str), UnitError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(UnitError::new("empty value"));
    }
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    if digits == 0 {
        return Err(UnitError::new(format!(
            "`{text}` does not start with a number"
        )));
    }
    let number = text[..digits]
        .parse::<u64>()
        .map_err(|_| UnitError::new(format!("`{}` is too large", &text[..digits])))?;
    Ok((number, text[digits..].trim_start()))
}

impl FromStr for Duration {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, UnitError> {
        let (number, unit) = split_number(text)?;
        if unit.is_empty() {
            return Err(UnitError::new(format!("`{text}` has no unit")));
        }
        let Some(&(_, factor)) = DURATION_UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(UnitError::new(format!("`{unit}` is not a unit of time")));
        };
        let ms = number
            .checked_mul(factor)
            .ok_or_else(|| UnitError::new(format!("`{text}` is too long")))?;
        Ok(Duration::from_millis(ms))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        let (unit, factor) = DURATION_UNITS
            .iter()
            .find(|(_, factor)| ms.is_multiple_of(*factor))
            .copied()
            .unwrap_or(("ms", 1));
        write!(f, "{}{unit}", ms / factor)
    }
}

/// A number of bytes: a whole number with an optional binary unit
/// `K`, `M`, `G` or `T` (powers of 1024, as Docker and systemd read them),
/// optionally followed by `B` or `iB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size(u64);

const SIZE_UNITS: [(&str, u64); 5] = [
    ("T", 1 << 40),
    ("G", 1 << 30),
    ("M", 1 << 20),
    ("K", 1 << 10),
    ("", 1),
];

impl Size {
    pub const fn from_bytes(bytes: u64) -> Self {
        Size(bytes)
    }

    pub fn bytes(self) -> u64 {
        self.0
    }

    /// The hint shown when a size is malformed.
    pub const HINT: &'static str =
        "write a whole number followed by K, M, G or T (powers of 1024), like \"256M\" or \"1G\"";
}

impl FromStr for Size {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, UnitError> {
        let (number, unit) = split_number(text)?;
        let upper = unit.to_ascii_uppercase();
        let base = upper
            .strip_suffix("IB")
            .filter(|base| !base.is_empty())
            .or_else(|| upper.strip_suffix('B'))
            .unwrap_or(&upper);
        let Some(&(_, factor)) = SIZE_UNITS.iter().find(|(name, _)| *name == base) else {
            return Err(UnitError::new(format!("`{unit}` is not a unit of size")));
        };
        number
            .checked_mul(factor)
            .map(Size)
            .ok_or_else(|| UnitError::new(format!("`{text}` is too large")))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0");
        }
        let (unit, factor) = SIZE_UNITS
            .iter()
            .find(|(_, factor)| self.0.is_multiple_of(*factor))
            .copied()
            .unwrap_or(("", 1));
        write!(f, "{}{unit}", self.0 / factor)
    }
}

/// Serde, schema and format-check glue shared by the string-typed units.
macro_rules! string_unit {
    ($ty:ty, $format:literal, $pattern:literal, $description:literal) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = Cow::<str>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }

        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                stringify!($ty).into()
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({
                    "type": "string",
                    "format": $format,
                    "pattern": $pattern,
                    "description": $description,
                })
            }
        }
    };
}

string_unit!(
    Duration,
    "duration",
    "^\\s*[0-9]+\\s*(ms|s|m|h|d)\\s*$",
    "A duration: a whole number followed by ms, s, m, h or d, like \"500ms\" or \"30s\"; at most 365d."
);
string_unit!(
    Size,
    "size",
    "^\\s*[0-9]+\\s*([KMGTkmgt]([iI]?[Bb])?|[Bb])?\\s*$",
    "A size in bytes: a whole number with an optional unit K, M, G or T (powers of 1024), like \"256M\"."
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print_back() {
        for (text, ms, printed) in [
            ("500ms", 500, "500ms"),
            ("30s", 30_000, "30s"),
            ("1500ms", 1_500, "1500ms"),
            ("2m", 120_000, "2m"),
            ("60m", 3_600_000, "1h"),
            ("1d", 86_400_000, "1d"),
            ("365d", 365 * 86_400_000, "365d"),
            ("0s", 0, "0s"),
        ] {
            let d: Duration = text.parse().expect(text);
            assert_eq!(d.as_millis(), ms, "{text}");
            assert_eq!(d.to_string(), printed, "{text}");
        }
    }

    #[test]
    fn malformed_durations_say_why() {
        for (text, why) in [
            ("5", "`5` has no unit"),
            ("5 sec", "`sec` is not a unit of time"),
            ("fast", "`fast` does not start with a number"),
            ("", "empty value"),
            ("1.5s", "`.5s` is not a unit of time"),
            (
                "99999999999999999999s",
                "`99999999999999999999` is too large",
            ),
        ] {
            let err = text.parse::<Duration>().expect_err(text);
            assert_eq!(err.reason, why, "{text}");
        }
    }

    #[test]
    fn gantry_toml_takes_durations_up_to_a_year_and_what_was_stored_stays_readable() {
        assert_eq!(
            Duration::parse_in_config("365d").map(Duration::as_millis),
            Ok(365 * 86_400_000)
        );
        for text in ["366d", "100000000h"] {
            let err = Duration::parse_in_config(text).expect_err(text);
            assert_eq!(
                err.reason,
                format!("`{text}` is longer than 365d, the longest time gantry.toml takes")
            );
            assert!(text.parse::<Duration>().is_ok(), "{text} as stored");
        }
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        for (text, bytes, printed) in [
            ("256M", 256 << 20, "256M"),
            ("1G", 1 << 30, "1G"),
            ("1GiB", 1 << 30, "1G"),
            ("512k", 512 << 10, "512K"),
            ("1024M", 1 << 30, "1G"),
            ("1000", 1000, "1000"),
        ] {
            let s: Size = text.parse().expect(text);
            assert_eq!(s.bytes(), bytes, "{text}");
            assert_eq!(s.to_string(), printed, "{text}");
        }
        assert!("12Q".parse::<Size>().is_err());
        assert!("lots".parse::<Size>().is_err());
    }
}
