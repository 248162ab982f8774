//! Where a problem is and what to do about it. A `Diagnostic` carries its key
//! path and byte span from the parser to the screen; `Diagnostics` keeps the
//! source text so the CLI can print the offending line with a caret.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use serde::Serialize;

/// One segment of a key path: a table key or an array index.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// A key path such as `services.web.health.interval` or `services.web.routes[1]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyPath(pub Vec<Segment>);

impl KeyPath {
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }

    pub fn key(&self, key: &str) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Key(key.to_owned()));
        KeyPath(segments)
    }

    pub fn index(&self, index: usize) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Index(index));
        KeyPath(segments)
    }

    pub fn parent(&self) -> Option<Self> {
        let (_, rest) = self.0.split_last()?;
        Some(KeyPath(rest.to_vec()))
    }

    /// Builds a path from keys, like `KeyPath::of(["services", "web", "port"])`.
    pub fn of<'a>(keys: impl IntoIterator<Item = &'a str>) -> Self {
        KeyPath(
            keys.into_iter()
                .map(|k| Segment::Key(k.to_owned()))
                .collect(),
        )
    }

    /// Parses a JSON pointer (`/services/web/routes/1`), as JSON Schema validators report paths.
    /// Numeric segments are array indexes: no table key in gantry.toml is a bare number
    /// where an array could stand, and the span index falls back to the parent if one were.
    pub fn from_pointer(pointer: &str) -> Self {
        KeyPath(
            pointer
                .split('/')
                .skip(1)
                .map(|raw| {
                    let key = raw.replace("~1", "/").replace("~0", "~");
                    match key.parse::<usize>() {
                        Ok(i) if !key.starts_with('+') => Segment::Index(i),
                        _ => Segment::Key(key),
                    }
                })
                .collect(),
        )
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Index(index) => write!(f, "[{index}]")?,
                Segment::Key(key) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    let bare = !key.is_empty()
                        && key
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if bare {
                        f.write_str(key)?;
                    } else {
                        write!(f, "{key:?}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

impl Serialize for KeyPath {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// What kind of mistake a diagnostic reports; stable, for scripts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// The file is not valid TOML.
    Syntax,
    /// A key the schema does not know.
    UnknownKey,
    /// A required key is missing.
    MissingKey,
    /// A value of the wrong type.
    WrongType,
    /// A value of the right type that is out of range or malformed.
    InvalidValue,
    /// A name that refers to nothing (a service, a host, an environment).
    UnknownReference,
    /// Keys that may not appear together, or of which exactly one must.
    Conflict,
    /// A dependency cycle.
    Cycle,
    /// Two services claim the same route.
    DuplicateRoute,
    /// `${VAR}` names a variable that is not set.
    UnsetVariable,
    /// A key the schema knows that this version cannot carry out yet.
    Unsupported,
}

impl Problem {
    pub fn code(self) -> &'static str {
        match self {
            Problem::Syntax => "config.syntax",
            Problem::UnknownKey => "config.unknown_key",
            Problem::MissingKey => "config.missing_key",
            Problem::WrongType => "config.wrong_type",
            Problem::InvalidValue => "config.invalid_value",
            Problem::UnknownReference => "config.unknown_reference",
            Problem::Conflict => "config.conflict",
            Problem::Cycle => "config.cycle",
            Problem::DuplicateRoute => "config.duplicate_route",
            Problem::UnsetVariable => "config.unset_variable",
            Problem::Unsupported => "config.unsupported",
        }
    }
}

/// One problem in a configuration file, located to the character.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// A stable code for the kind of problem, like `config.unknown_key`.
    pub code: &'static str,
    /// The key path the problem is about (empty for the whole file).
    pub path: KeyPath,
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// Byte range in the source, for rendering.
    #[serde(skip)]
    pub span: Range<usize>,
}

/// All the problems found in one file, with the text they point into.
#[derive(Clone, Debug)]
pub struct Diagnostics {
    pub file: String,
    pub source: Arc<str>,
    pub items: Vec<Diagnostic>,
    /// Problems found past the first [`crate::document::MAX_FINDINGS`]:
    /// counted, not kept.
    pub more: usize,
}

impl Diagnostics {
    /// Every problem found, kept or only counted.
    pub fn total(&self) -> usize {
        self.items.len() + self.more
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.items.as_slice() {
            [one] if self.more == 0 => write!(
                f,
                "{}:{}:{}: {}",
                one.file, one.line, one.column, one.message
            ),
            _ => write!(f, "{} has {} errors", self.file, self.total()),
        }
    }
}

/// Maps byte offsets to 1-based line and column.
#[derive(Debug)]
pub struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub fn new(text: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { starts }
    }

    pub fn line_column(&self, text: &str, offset: usize) -> (usize, usize) {
        let offset = offset.min(text.len());
        let line = self.starts.partition_point(|&start| start <= offset) - 1;
        let start = self.starts[line];
        let column = text
            .get(start..offset)
            .map_or(offset - start, |prefix| prefix.chars().count());
        (line + 1, column + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_print_like_toml_keys() {
        let path = KeyPath::of(["services", "web", "routes"]).index(1);
        assert_eq!(path.to_string(), "services.web.routes[1]");
        assert_eq!(
            KeyPath::of(["env", "a.b"]).to_string(),
            "env.\"a.b\"",
            "a key with a dot is quoted"
        );
        assert_eq!(
            KeyPath::from_pointer("/services/web/routes/1"),
            path,
            "JSON pointers map to the same path"
        );
    }

    #[test]
    fn line_and_column_count_characters() {
        let text = "a = 1\nné = \"x\"\n";
        let index = LineIndex::new(text);
        assert_eq!(index.line_column(text, 0), (1, 1));
        assert_eq!(index.line_column(text, 6), (2, 1));
        let quote = text.find('"').expect("quote");
        assert_eq!(index.line_column(text, quote), (2, 6));
    }
}
