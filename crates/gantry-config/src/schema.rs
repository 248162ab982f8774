//! The JSON Schema of gantry.toml, generated from the model in `model.rs`, and
//! the structural check that runs it over a document: unknown keys, wrong
//! types, missing keys, out-of-range numbers and malformed strings, all at
//! once, each turned into a message that names the key and what to write.

use std::sync::OnceLock;

use jsonschema::error::ValidationErrorKind;
use serde_json::Value;

use crate::diagnostic::{KeyPath, Problem, Segment};
use crate::document::{Document, Finding, Findings};
use crate::formats::{self, FORMATS};
use crate::model::File;
use crate::suggest::did_you_mean;

/// The JSON Schema of gantry.toml (draft 2020-12).
pub fn json_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let mut schema = schemars::schema_for!(File).to_value();
        drop_null(&mut schema);
        schema
    })
}

/// TOML has no null, so `Option<T>` fields are simply optional: remove the
/// `null` alternatives schemars adds, which would only blur error messages.
fn drop_null(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Array(types)) = map.get_mut("type") {
                types.retain(|t| t != "null");
                if let [single] = types.as_slice() {
                    let single = single.clone();
                    map.insert("type".into(), single);
                }
            }
            if let Some(Value::Array(branches)) = map.get_mut("anyOf") {
                branches.retain(|b| b.get("type").is_none_or(|t| t != "null"));
                if branches.len() == 1
                    && let Some(Value::Object(branch)) = branches.pop()
                {
                    map.remove("anyOf");
                    for (k, v) in branch {
                        map.entry(k).or_insert(v);
                    }
                }
            }
            map.values_mut().for_each(drop_null);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_null),
        _ => {}
    }
}

fn validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let mut options = jsonschema::options().should_validate_formats(true);
        for format in FORMATS {
            let check = format.check;
            options = options.with_format(format.name, move |s: &str| check(s).is_ok());
        }
        // The schema is generated from our own types; failing to compile it is a bug
        // that every test would catch at once.
        #[allow(clippy::expect_used)]
        options
            .build(json_schema())
            .expect("the generated schema compiles")
    })
}

/// The schema node that describes the value at `path`, following `$ref`s.
pub fn node_at<'a>(path: &KeyPath) -> Option<&'a Value> {
    let root = json_schema();
    let mut node = resolve(root, root)?;
    for segment in &path.0 {
        node = match segment {
            Segment::Key(key) => node
                .get("properties")
                .and_then(|p| p.get(key))
                .or_else(|| node.get("additionalProperties").filter(|a| a.is_object()))?,
            Segment::Index(_) => node.get("items")?,
        };
        node = resolve(root, node)?;
    }
    Some(node)
}

fn resolve<'a>(root: &'a Value, node: &'a Value) -> Option<&'a Value> {
    match node.get("$ref").and_then(Value::as_str) {
        Some(reference) => root.pointer(reference.strip_prefix('#')?),
        None => Some(node),
    }
}

/// Checks the document against the schema, returning every problem found.
pub fn check(document: &Document<'_>) -> Findings {
    let mut findings = Findings::default();
    // Hashes, not the paths: a file wrong on every line keeps 8 bytes a
    // problem here, not a copy of each path.
    let mut seen = std::collections::HashSet::new();
    let mut first = |path: &KeyPath, problem: Problem| {
        use std::hash::BuildHasher;
        let hash = seen.hasher().hash_one((path, problem));
        seen.insert(hash)
    };
    for error in validator().iter_errors(&document.value) {
        let path = KeyPath::from_pointer(error.instance_path().as_str());
        let instance = error.instance();
        for finding in describe(document, &path, instance, error.kind()) {
            // Some values break two keywords at once (a format and its pattern, a
            // minimum and a `not`): one message per path and problem is enough.
            if first(&finding.path, finding.problem) {
                findings.push(finding);
            }
        }
    }
    // JSON Schema counts 2.0 as an integer; TOML does not, and neither does the
    // model. A float where only an integer fits is a wrong type.
    for path in &document.floats {
        let Some(node) = node_at(path) else { continue };
        let types: Vec<&str> = match node.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let number = descend(&document.value, path).cloned().unwrap_or_default();
        if types.contains(&"integer")
            && !types.contains(&"number")
            && first(path, Problem::WrongType)
        {
            findings.push(Finding {
                problem: Problem::WrongType,
                path: path.clone(),
                span: document.value_span(path),
                message: format!(
                    "expected {}, found the number {number}",
                    expected_type(node)
                ),
                hint: Some("write a whole number without a decimal point".to_owned()),
            });
        }
    }
    findings
}

fn descend<'v>(value: &'v Value, path: &KeyPath) -> Option<&'v Value> {
    path.0
        .iter()
        .try_fold(value, |node, segment| match segment {
            Segment::Key(k) => node.get(k),
            Segment::Index(i) => node.get(i),
        })
}

fn describe(
    document: &Document<'_>,
    path: &KeyPath,
    instance: &Value,
    kind: &ValidationErrorKind,
) -> Vec<Finding> {
    let node = node_at(path);
    let value_finding = |problem, message: String, hint: Option<String>| Finding {
        problem,
        path: path.clone(),
        span: document.value_span(path),
        message,
        hint,
    };
    let finding = match kind {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            return unknown_keys(document, path, node, unexpected);
        }
        ValidationErrorKind::Required { property } => {
            let (what, about) = missing_key(path, node, property.as_str().unwrap_or_default());
            value_finding(Problem::MissingKey, what, about)
        }
        // TOML has no null: the document reads as null only a value it could
        // not take (an integer too large, a date), and has reported it.
        ValidationErrorKind::Type { .. } if instance.is_null() => return Vec::new(),
        ValidationErrorKind::Type { .. } => {
            let expected = node.map_or_else(|| "another type".to_owned(), expected_type);
            let quote = (expected.ends_with("string")
                && matches!(instance, Value::Number(_) | Value::Bool(_)))
            .then(|| {
                format!(
                    "quote it to make it a string: {} = \"{instance}\"",
                    last_key(path)
                )
            });
            let about = node
                .and_then(|n| n.get("description"))
                .and_then(Value::as_str)
                .map(|d| format!("`{}`: {}", last_key(path), lowercase_first(d)));
            value_finding(
                Problem::WrongType,
                format!("expected {expected}, found {}", describe_value(instance)),
                quote.or(about),
            )
        }
        ValidationErrorKind::Enum { .. } | ValidationErrorKind::OneOfNotValid { .. }
            if !enum_options(node).is_empty() =>
        {
            let options = enum_options(node);
            let given = instance.as_str().unwrap_or_default();
            value_finding(
                Problem::InvalidValue,
                format!("`{given}` is not one of: {}", options.join(", ")),
                did_you_mean(given, options.iter().copied())
                    .map(|b| format!("did you mean `{b}`?")),
            )
        }
        ValidationErrorKind::Format { format } => {
            let text = instance.as_str().unwrap_or_default();
            let Some(format) = formats::find(format) else {
                return Vec::new();
            };
            let reason = (format.check)(text).err().unwrap_or_default();
            value_finding(
                Problem::InvalidValue,
                format!("invalid {}: {reason}", format_noun(format.name)),
                Some(format.hint.to_owned()),
            )
        }
        // Our string types carry a format whose check says more than the pattern,
        // which is there for editors; the format's error is reported instead.
        ValidationErrorKind::Pattern { .. }
            if node
                .and_then(|n| n.get("format"))
                .and_then(Value::as_str)
                .is_some_and(|f| formats::find(f).is_some()) =>
        {
            return Vec::new();
        }
        ValidationErrorKind::Minimum { limit }
        | ValidationErrorKind::ExclusiveMinimum { limit } => value_finding(
            Problem::InvalidValue,
            format!(
                "`{}` must be at least {limit}, found {instance}",
                last_key(path)
            ),
            None,
        ),
        ValidationErrorKind::Not { .. } => value_finding(
            Problem::InvalidValue,
            format!("`{}` cannot be {instance}", last_key(path)),
            None,
        ),
        ValidationErrorKind::Maximum { limit }
        | ValidationErrorKind::ExclusiveMaximum { limit } => value_finding(
            Problem::InvalidValue,
            format!(
                "`{}` must be at most {limit}, found {instance}",
                last_key(path)
            ),
            None,
        ),
        ValidationErrorKind::MinItems { limit } => value_finding(
            Problem::InvalidValue,
            format!(
                "`{}` needs at least {limit} item{}",
                last_key(path),
                plural(*limit)
            ),
            None,
        ),
        other => value_finding(
            Problem::InvalidValue,
            format!("invalid value at `{path}` ({})", other.keyword()),
            None,
        ),
    };
    vec![finding]
}

/// One finding per unknown key, with the closest known key as a hint.
fn unknown_keys(
    document: &Document<'_>,
    path: &KeyPath,
    node: Option<&Value>,
    unexpected: &[String],
) -> Vec<Finding> {
    let known: Vec<&str> = node
        .and_then(|n| n.get("properties"))
        .and_then(Value::as_object)
        .map(|p| p.keys().map(String::as_str).collect())
        .unwrap_or_default();
    unexpected
        .iter()
        .map(|key| {
            let child = path.key(key);
            let place = if path.0.is_empty() {
                "at the top level".to_owned()
            } else {
                format!("in `{path}`")
            };
            Finding {
                problem: Problem::UnknownKey,
                span: document.key_span(&child),
                path: child,
                message: format!("unknown key `{key}` {place}"),
                hint: Some(match did_you_mean(key, known.iter().copied()) {
                    Some(best) => format!("did you mean `{best}`?"),
                    None => format!("expected one of: {}", known.join(", ")),
                }),
            }
        })
        .collect()
}

/// The message for a missing key, and a hint from its description.
fn missing_key(path: &KeyPath, node: Option<&Value>, key: &str) -> (String, Option<String>) {
    let what = if path.0.is_empty() {
        format!("missing `[{key}]`")
    } else {
        format!("missing key `{key}` in `{path}`")
    };
    let about = node
        .and_then(|n| n.get("properties"))
        .and_then(|p| p.get(key))
        .and_then(|p| p.get("description"))
        .or_else(|| node_at(&path.key(key)).and_then(|n| n.get("description")))
        .and_then(Value::as_str)
        .map(|d| {
            let table = if path.0.is_empty() {
                format!("[{key}]")
            } else {
                format!("`{key}`")
            };
            format!("add {table}: {}", lowercase_first(d))
        });
    (what, about)
}

/// The values an enum allows, whether schemars wrote it as `enum` or as a
/// `oneOf` of documented constants.
fn enum_options(node: Option<&Value>) -> Vec<&str> {
    let Some(node) = node else {
        return Vec::new();
    };
    if let Some(options) = node.get("enum").and_then(Value::as_array) {
        return options.iter().filter_map(Value::as_str).collect();
    }
    node.get("oneOf")
        .and_then(Value::as_array)
        .map(|branches| {
            branches
                .iter()
                .filter_map(|b| {
                    b.get("const")
                        .or_else(|| b.get("enum").and_then(|e| e.get(0)))
                })
                .filter_map(Value::as_str)
                .collect()
        })
        .unwrap_or_default()
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn last_key(path: &KeyPath) -> String {
    match path.0.last() {
        Some(Segment::Key(key)) => key.clone(),
        Some(Segment::Index(_)) => path.to_string(),
        None => "the file".to_owned(),
    }
}

pub(crate) fn lowercase_first(text: &str) -> String {
    let mut chars = text.chars();
    let text = match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    };
    text.trim_end_matches('.').to_owned()
}

fn format_noun(format: &str) -> &str {
    match format {
        "env-name" => "environment variable name",
        "secret-name" => "secret name",
        "http-path" => "path",
        "ssh-target" => "SSH address",
        "project-path" => "path",
        "build-stage" => "stage name",
        other => other,
    }
}

/// "a string", "an integer or a string", "a table", "one of: always, never".
fn expected_type(node: &Value) -> String {
    if let Some(format) = node.get("format").and_then(Value::as_str)
        && formats::find(format).is_some()
        && node.get("type") == Some(&Value::from("string"))
    {
        return format!("a {} string", format_noun(format));
    }
    if let Some(options) = node.get("enum").and_then(Value::as_array) {
        let options: Vec<&str> = options.iter().filter_map(Value::as_str).collect();
        return format!("one of: {}", options.join(", "));
    }
    if let Some(branches) = node.get("oneOf").and_then(Value::as_array) {
        let options: Vec<&str> = branches
            .iter()
            .filter_map(|b| b.get("const").and_then(Value::as_str))
            .collect();
        if !options.is_empty() {
            return format!("one of: {}", options.join(", "));
        }
    }
    let types: Vec<&str> = match node.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return "another type".to_owned(),
    };
    types
        .iter()
        .map(|t| match *t {
            "object" => "a table",
            "array" => "an array",
            "string" => "a string",
            "integer" => "an integer",
            "number" => "a number",
            "boolean" => "true or false",
            _ => "another type",
        })
        .collect::<Vec<_>>()
        .join(" or ")
}

fn describe_value(value: &Value) -> String {
    match value {
        Value::Object(_) => "a table".to_owned(),
        Value::Array(_) => "an array".to_owned(),
        Value::String(s) => format!("the string {s:?}"),
        Value::Number(n) if n.is_f64() => format!("the number {n}"),
        Value::Number(n) => format!("the integer {n}"),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Null => "nothing".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_has_no_null_types() {
        let text = json_schema().to_string();
        assert!(!text.contains("\"null\""), "{text}");
    }

    #[test]
    fn node_at_follows_refs() {
        let node = node_at(&KeyPath::of(["services", "web", "health", "interval"]))
            .expect("interval is in the schema");
        assert_eq!(node["format"], "duration");
        let env_override = node_at(&KeyPath::of([
            "environments",
            "prod",
            "services",
            "web",
            "replicas",
        ]))
        .expect("overrides use the service schema");
        assert_eq!(env_override["minimum"], 1);
    }
}
