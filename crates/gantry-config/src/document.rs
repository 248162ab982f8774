//! The parsed TOML document as JSON values, kept beside the TOML tree it came
//! from so any later check that knows a key path can point at the source.
//! Spans are looked up in that tree only when a problem is reported, so a
//! valid file pays nothing for them. `${VAR}` interpolation happens here, on
//! string values, as they are read.

use std::ops::Range;

use serde_json::{Map, Number, Value};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diagnostic::{KeyPath, Problem, Segment};

/// A problem found while reading the document, before it has a line and column.
#[derive(Debug)]
pub struct Finding {
    pub problem: Problem,
    pub path: KeyPath,
    pub span: Range<usize>,
    pub message: String,
    pub hint: Option<String>,
}

/// The most problems kept for a report: a file wrong on every line would
/// otherwise cost memory and output in proportion to its size. Past it,
/// problems are only counted.
pub const MAX_FINDINGS: usize = 100;

/// Problems found, the first [`MAX_FINDINGS`] kept, the rest counted.
#[derive(Debug, Default)]
pub struct Findings {
    pub items: Vec<Finding>,
    /// Found past the cap, and dropped.
    pub more: usize,
}

impl Findings {
    pub fn push(&mut self, finding: Finding) {
        if self.items.len() < MAX_FINDINGS {
            self.items.push(finding);
        } else {
            self.more += 1;
        }
    }

    /// Whether the next finding would only be counted (so need not be made).
    pub fn full(&self) -> bool {
        self.items.len() >= MAX_FINDINGS
    }

    /// Takes `other`'s findings that `keep` accepts, and its count.
    pub fn absorb(&mut self, other: Findings, keep: impl Fn(&Finding) -> bool) {
        for finding in other.items.into_iter().filter(|f| keep(f)) {
            self.push(finding);
        }
        self.more += other.more;
    }

    pub fn total(&self) -> usize {
        self.items.len() + self.more
    }

    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }
}

pub struct Document<'t> {
    pub value: Value,
    table: Spanned<DeTable<'t>>,
    /// Where the document has floats: the only values JSON Schema and TOML
    /// disagree about (2.0 is an integer to one and not the other).
    pub floats: Vec<KeyPath>,
}

/// Looks up an environment variable for `${VAR}`.
pub type Vars<'a> = &'a dyn Fn(&str) -> Option<String>;

/// A key's span (None for array items) and its value's span.
type Spans = (Option<Range<usize>>, Range<usize>);

impl<'t> Document<'t> {
    /// Parses TOML, recovering where it can so that several syntax errors are reported at once.
    pub fn parse(text: &'t str, vars: Vars<'_>) -> (Document<'t>, Findings) {
        let (table, errors) = DeTable::parse_recoverable(text);
        let mut findings = Findings::default();
        for error in &errors {
            findings.push(Finding {
                problem: Problem::Syntax,
                path: KeyPath::root(),
                span: error.span().unwrap_or(0..0),
                message: error.message().trim_end().to_owned(),
                hint: None,
            });
        }
        drop(errors);
        let mut reader = Reader {
            text,
            vars,
            stack: Vec::new(),
            floats: Vec::new(),
            findings: Findings::default(),
        };
        let value = reader.table(table.get_ref());
        findings.absorb(reader.findings, |_| true);
        let floats = reader.floats;
        (
            Document {
                value,
                table,
                floats,
            },
            findings,
        )
    }

    /// The string at `path` as the file writes it, before `${VAR}` is expanded.
    pub fn raw_str(&self, path: &KeyPath) -> Option<&str> {
        match self.lookup(path)?.1?.get_ref() {
            DeValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The spans of the key and value at `path`, if the source has them.
    fn spans(&self, path: &KeyPath) -> Option<Spans> {
        match self.lookup(path)? {
            (key, Some(value)) => Some((key, value.span())),
            (_, None) => Some((None, self.table.span())),
        }
    }

    /// The key's span and the value at `path` (`None`: the whole document).
    #[allow(clippy::type_complexity)]
    fn lookup(
        &self,
        path: &KeyPath,
    ) -> Option<(Option<Range<usize>>, Option<&Spanned<DeValue<'t>>>)> {
        let mut key = None;
        let mut value: &Spanned<DeValue<'t>>;
        let mut segments = path.0.iter();
        let Some(first) = segments.next() else {
            return Some((None, None));
        };
        let Segment::Key(k) = first else { return None };
        let (k_span, v) = self.table.get_ref().get_key_value(k.as_str())?;
        key = Some(k_span.span()).or(key);
        value = v;
        for segment in segments {
            match (segment, value.get_ref()) {
                (Segment::Key(k), DeValue::Table(table)) => {
                    let (k_span, v) = table.get_key_value(k.as_str())?;
                    key = Some(k_span.span());
                    value = v;
                }
                (Segment::Index(i), DeValue::Array(items)) => {
                    value = items.get(*i)?;
                    key = None;
                }
                _ => return None,
            }
        }
        Some((key, Some(value)))
    }

    /// The span to point at for a problem with the value at `path`: the value
    /// itself, or the nearest ancestor the source shows.
    pub fn value_span(&self, path: &KeyPath) -> Range<usize> {
        let mut path = path.clone();
        loop {
            if let Some((_, value)) = self.spans(&path) {
                return value;
            }
            match path.parent() {
                Some(parent) => path = parent,
                None => return 0..0,
            }
        }
    }

    /// The span to point at for a problem with the key at `path` (an unknown
    /// key, a name that refers to nothing): the key, else its value.
    pub fn key_span(&self, path: &KeyPath) -> Range<usize> {
        match self.spans(path) {
            Some((Some(key), _)) => key,
            _ => self.value_span(path),
        }
    }

    pub fn contains(&self, path: &KeyPath) -> bool {
        self.spans(path).is_some()
    }
}

/// A segment of the path being read, borrowed from the TOML tree.
#[derive(Clone, Copy)]
enum At<'a> {
    Key(&'a str),
    Index(usize),
}

struct Reader<'a> {
    text: &'a str,
    vars: Vars<'a>,
    stack: Vec<At<'a>>,
    floats: Vec<KeyPath>,
    findings: Findings,
}

impl<'a> Reader<'a> {
    /// The path being read, materialized only when something needs it.
    fn path(&self) -> KeyPath {
        KeyPath(
            self.stack
                .iter()
                .map(|at| match at {
                    At::Key(k) => Segment::Key((*k).to_owned()),
                    At::Index(i) => Segment::Index(*i),
                })
                .collect(),
        )
    }

    fn table(&mut self, table: &'a DeTable<'a>) -> Value {
        let mut map = Map::with_capacity(table.len());
        for (key, value) in table {
            self.stack.push(At::Key(key.get_ref()));
            let json = self.value(value);
            self.stack.pop();
            map.insert(key.get_ref().to_string(), json);
        }
        Value::Object(map)
    }

    fn value(&mut self, value: &'a Spanned<DeValue<'a>>) -> Value {
        let span = value.span();
        match value.get_ref() {
            DeValue::String(s) => Value::String(self.interpolate(s, span)),
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Value::Number(n.into()),
                Err(_) => {
                    self.out_of_range(span);
                    Value::Null
                }
            },
            DeValue::Float(f) => match f.as_str().parse::<f64>().ok().and_then(Number::from_f64) {
                Some(n) => {
                    self.floats.push(self.path());
                    Value::Number(n)
                }
                None => {
                    self.invalid(span, "a number must be finite", None);
                    Value::Null
                }
            },
            DeValue::Boolean(b) => Value::Bool(*b),
            DeValue::Datetime(d) => {
                self.invalid(
                    span,
                    "dates and times are not values gantry.toml uses",
                    Some(format!("quote it to make it a string: \"{d}\"")),
                );
                Value::Null
            }
            DeValue::Array(items) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        self.stack.push(At::Index(i));
                        let json = self.value(item);
                        self.stack.pop();
                        json
                    })
                    .collect(),
            ),
            DeValue::Table(table) => self.table(table),
        }
    }

    /// An integer beyond i64, said once, with the bound of its key where the
    /// schema has one. The value reads as null from here on: the schema
    /// takes null for a value reported here, and says no more of it.
    fn out_of_range(&mut self, span: Range<usize>) {
        let written = self.text.get(span.clone()).unwrap_or("the integer");
        let node = crate::schema::node_at(&self.path());
        let key = self.last_key();
        let negative = written.starts_with('-');
        let (size, bound, limit, widest) = if negative {
            ("small", "minimum", "at least", i64::MIN)
        } else {
            ("large", "maximum", "at most", i64::MAX)
        };
        let reason = match node.and_then(|n| n.get(bound)) {
            Some(bound) => format!("`{key}` must be {limit} {bound}"),
            None => format!("integers in gantry.toml are {limit} {widest}"),
        };
        let hint = node
            .and_then(|n| n.get("description"))
            .and_then(Value::as_str)
            .map(|d| format!("`{key}`: {}", crate::schema::lowercase_first(d)));
        self.invalid(span, &format!("`{written}` is too {size}: {reason}"), hint);
    }

    /// The key the value being read is under, for messages.
    fn last_key(&self) -> &str {
        self.stack
            .iter()
            .rev()
            .find_map(|at| match at {
                At::Key(k) => Some(*k),
                At::Index(_) => None,
            })
            .unwrap_or("value")
    }

    fn invalid(&mut self, span: Range<usize>, message: &str, hint: Option<String>) {
        let path = self.path();
        self.findings.push(Finding {
            problem: Problem::InvalidValue,
            path,
            span,
            message: message.to_owned(),
            hint,
        });
    }

    /// Expands `${NAME}` and `${NAME:-default}`; `$$` stands for a literal `$`.
    fn interpolate(&mut self, s: &str, span: Range<usize>) -> String {
        if !s.contains('$') {
            return s.to_owned();
        }
        // Where the string's content starts in the source, when it is written without
        // escapes, so errors can point at the `${` itself.
        let raw = self.text.get(span.clone()).unwrap_or_default();
        let content_start = (raw.len() == s.len() + 2 && raw.get(1..raw.len() - 1) == Some(s))
            .then_some(span.start + 1);
        let at = |offset: usize, len: usize| match content_start {
            Some(start) => start + offset..start + offset + len,
            None => span.clone(),
        };

        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        let mut offset = 0;
        while let Some(dollar) = rest.find('$') {
            out.push_str(&rest[..dollar]);
            let after = &rest[dollar + 1..];
            if let Some(after) = after.strip_prefix('$') {
                out.push('$');
                offset += dollar + 2;
                rest = after;
                continue;
            }
            let Some(body) = after.strip_prefix('{') else {
                out.push('$');
                offset += dollar + 1;
                rest = after;
                continue;
            };
            let Some(end) = body.find('}') else {
                self.findings.push(Finding {
                    problem: Problem::InvalidValue,
                    path: self.path(),
                    span: at(offset + dollar, 2),
                    message: "`${` is not closed with `}`".to_owned(),
                    hint: Some("write ${NAME}, or $${ for a literal ${".to_owned()),
                });
                return out;
            };
            let expression = &body[..end];
            let whole = expression.len() + 3;
            let (name, default) = match expression.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (expression, None),
            };
            if crate::formats::check_env_name(name).is_err() {
                self.findings.push(Finding {
                    problem: Problem::InvalidValue,
                    path: self.path(),
                    span: at(offset + dollar, whole),
                    message: format!("`${{{expression}}}` does not name an environment variable"),
                    hint: Some(
                        "write ${NAME} or ${NAME:-default}, where NAME is letters, digits and underscores"
                            .to_owned(),
                    ),
                });
            } else {
                match ((self.vars)(name), default) {
                    (Some(value), _) => out.push_str(&value),
                    (None, Some(default)) => out.push_str(default),
                    (None, None) => self.findings.push(Finding {
                        problem: Problem::UnsetVariable,
                        path: self.path(),
                        span: at(offset + dollar, whole),
                        message: format!("environment variable `{name}` is not set"),
                        hint: Some(format!(
                            "set {name}, give a default with ${{{name}:-default}}, or write $${{{name}}} to pass it through literally"
                        )),
                    }),
                }
            }
            let consumed = dollar + 2 + end + 1;
            offset += consumed;
            rest = &rest[consumed..];
        }
        out.push_str(rest);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<String> {
        (name == "HOME_DIR").then(|| "/home/me".to_owned())
    }

    #[test]
    fn interpolation_expands_defaults_and_escapes() {
        let text = r#"a = "${HOME_DIR}/x ${MISSING:-dflt} $$HOME $${KEEP} $PORT""#;
        let (doc, findings) = Document::parse(text, &vars);
        assert!(findings.is_empty(), "{findings:?}");
        assert_eq!(doc.value["a"], "/home/me/x dflt $HOME ${KEEP} $PORT");
    }

    #[test]
    fn unset_variable_points_at_its_dollar() {
        let text = "a = \"x ${NOPE} y\"\n";
        let (_, findings) = Document::parse(text, &vars);
        let findings = findings.items;
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].problem, Problem::UnsetVariable);
        assert_eq!(&text[findings[0].span.clone()], "${NOPE}");
        assert_eq!(findings[0].span.start, text.find("${").expect("${"));
    }

    #[test]
    fn spans_cover_keys_and_values() {
        let text = "[services.web]\nport = 8080\n";
        let (doc, findings) = Document::parse(text, &vars);
        assert!(findings.is_empty());
        let port = KeyPath::of(["services", "web", "port"]);
        assert_eq!(&text[doc.key_span(&port)], "port");
        assert_eq!(&text[doc.value_span(&port)], "8080");
        let missing = KeyPath::of(["services", "web", "health", "interval"]);
        assert!(!doc.contains(&missing));
        let web = KeyPath::of(["services", "web"]);
        assert_eq!(doc.value_span(&missing), doc.value_span(&web));
    }
}
