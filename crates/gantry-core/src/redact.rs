//! Hiding credentials in what Gantry prints, logs or keeps. Names are not
//! enough (`DATABASE_URL` holds a password in `postgres://user:pass@host`),
//! so values are hidden too: every known secret value, and the password of
//! any URL's userinfo.

/// Shown in place of a value that must not be printed.
pub const REDACTED: &str = "(redacted)";

/// Secret values shorter than this are not searched for in other text: a
/// one- or two-character value would hide half of every line.
const MIN_VALUE_LEN: usize = 4;

/// Env values under names like these hold credentials: the agent keeps
/// them in the project's secrets file, not its store ([`is_credential`]).
/// An agent and a CLI must agree on this list (`gantry plan` compares what
/// each keeps where), so it changes only with both.
fn credential_name(name: &str) -> bool {
    let name = name.to_ascii_uppercase();
    [
        "PASSWORD",
        "PASSWD",
        "SECRET",
        "TOKEN",
        "API_KEY",
        "PRIVATE_KEY",
        "CREDENTIAL",
    ]
    .iter()
    .any(|word| name.contains(word))
}

/// Env values under names like these are hidden wherever Gantry shows
/// them: those [`credential_name`] knows, and more that often hold one.
/// Some words hide a name wherever they stand in it (`GPG_PASSPHRASE`,
/// `OPENAI_APIKEY`); short ones only as a whole word between underscores
/// (`STRIPE_KEY`, `SENTRY_DSN`, `BASIC_AUTH`, `KEY_ID`), so `KEYBOARD` and
/// `AUTHOR` show. Hiding a harmless value costs a look at gantry.toml;
/// showing a credential cannot be taken back. Display only: what the
/// agent stores where does not change with this list.
pub fn looks_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    let anywhere = ["PASSPHRASE", "APIKEY", "PRIVATE"];
    let words = [
        "KEY", "KEYS", "DSN", "AUTH", "PASS", "PWD", "SALT", "COOKIE",
    ];
    credential_name(name)
        || anywhere.iter().any(|word| upper.contains(word))
        || upper
            .split(|c: char| !c.is_ascii_alphanumeric())
            .any(|part| words.contains(&part))
}

/// Whether an env entry holds a credential, which the agent keeps in the
/// secrets file: by its name ([`credential_name`]), or a URL with a
/// password in its value.
pub fn is_credential(name: &str, value: &str) -> bool {
    credential_name(name) || url_passwords(value) != value
}

/// `text` with the password of every `scheme://user:password@host` in it
/// replaced by [`REDACTED`].
pub fn url_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let authority_end = after
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .unwrap_or(after.len());
        let authority = &after[..authority_end];
        match authority
            .rfind('@')
            .and_then(|userinfo_end| Some((userinfo_end, authority[..userinfo_end].find(':')?)))
        {
            Some((userinfo_end, colon)) => {
                out.push_str(&authority[..=colon]);
                out.push_str(REDACTED);
                out.push_str(&authority[userinfo_end..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[authority_end..];
    }
    out.push_str(rest);
    out
}

/// The string values under every `secrets` object of a JSON document: the
/// secret values a deploy or rollback request carries.
pub fn secret_values(value: &serde_json::Value) -> Vec<String> {
    use serde_json::Value;
    let mut found = Vec::new();
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        match value {
            Value::Array(items) => stack.extend(items),
            Value::Object(fields) => {
                for (name, field) in fields {
                    match (name.as_str(), field) {
                        ("secrets", Value::Object(secrets)) => found.extend(
                            secrets
                                .values()
                                .filter_map(Value::as_str)
                                .map(str::to_owned),
                        ),
                        (_, other) => stack.push(other),
                    }
                }
            }
            _ => {}
        }
    }
    found
}

/// Hides known secret values, and URL passwords, in text.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Longest first, so a value containing another is hidden whole.
    values: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("values", &self.values.len())
            .finish()
    }
}

impl Redactor {
    pub fn new<I, S>(values: I) -> Redactor
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut values: Vec<String> = values
            .into_iter()
            .map(Into::into)
            .filter(|v| v.len() >= MIN_VALUE_LEN)
            .collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Redactor { values }
    }

    /// `text` with every known value and URL password replaced.
    pub fn text(&self, text: &str) -> String {
        let mut out = url_passwords(text);
        for value in &self.values {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), REDACTED);
            }
        }
        out
    }

    /// Whether `text` holds one of the known values.
    pub fn finds_in(&self, text: &str) -> bool {
        self.values.iter().any(|v| text.contains(v.as_str()))
    }

    /// Also hides `values` from now on.
    pub fn learn<I, S>(&mut self, values: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let values = self
            .values
            .drain(..)
            .chain(values.into_iter().map(Into::into));
        *self = Redactor::new(values.collect::<Vec<_>>());
    }

    /// A JSON document as it may be shown (an agent API body): every value
    /// under a `secrets` object, and every `env` value whose name looks
    /// secret, hidden whole; known values and URL passwords hidden in every
    /// other string.
    pub fn json(&self, value: &mut serde_json::Value) {
        use serde_json::Value;
        match value {
            Value::String(text) => *text = self.text(text),
            Value::Array(items) => items.iter_mut().for_each(|item| self.json(item)),
            Value::Object(fields) => {
                for (name, field) in fields.iter_mut() {
                    match (name.as_str(), field) {
                        ("secrets", Value::Object(secrets)) => {
                            for secret in secrets.values_mut() {
                                *secret = Value::String(REDACTED.to_owned());
                            }
                        }
                        ("env", Value::Object(env)) => {
                            for (name, value) in env.iter_mut() {
                                match value {
                                    Value::String(_) if looks_secret(name) => {
                                        *value = Value::String(REDACTED.to_owned());
                                    }
                                    other => self.json(other),
                                }
                            }
                        }
                        (_, other) => self.json(other),
                    }
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    /// A service as it may be shown: credential env values hidden whole,
    /// known values and URL passwords hidden in every other value and in its
    /// command.
    pub fn service(&self, service: &mut crate::config::resolve::Service) {
        let run = match &mut service.workload {
            crate::config::resolve::Workload::Process { run } => Some(run),
            _ => None,
        };
        self.env_and_command(&mut service.env, run);
    }

    /// [`Redactor::service`] for a service as the agent API carries it.
    pub fn spec(&self, service: &mut crate::agent_api::ServiceSpec) {
        let run = match &mut service.workload {
            crate::agent_api::v1::Workload::Process { run } => Some(run),
            _ => None,
        };
        self.env_and_command(&mut service.env, run);
    }

    fn env_and_command(
        &self,
        env: &mut std::collections::BTreeMap<String, String>,
        run: Option<&mut String>,
    ) {
        for (name, value) in env.iter_mut() {
            *value = if looks_secret(name) {
                REDACTED.to_owned()
            } else {
                self.text(value)
            };
        }
        if let Some(run) = run {
            *run = self.text(run);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_names_are_told_by_their_words_not_by_letters_inside_others() {
        for name in [
            "DB_PASSWORD",
            "github_token",
            "STRIPE_KEY",
            "SENTRY_DSN",
            "BASIC_AUTH",
            "OPENAI_APIKEY",
            "SMTP_PASS",
            "MYSQL_PWD",
            "SESSION_COOKIE_KEYS",
            "PASSWORD_SALT",
            "GPG_PASSPHRASE",
            "TLS_PRIVATE_KEY_PEM",
        ] {
            assert!(looks_secret(name), "{name} should be hidden");
        }
        for name in [
            "KEYBOARD",
            "AUTHOR",
            "PORT",
            "RUST_LOG",
            "PASSENGER_COUNT",
            "BYPASS_CACHE",
        ] {
            assert!(!looks_secret(name), "{name} should show");
        }
    }

    #[test]
    fn url_passwords_are_hidden_wherever_they_are() {
        assert_eq!(
            url_passwords("postgres://shop:hunter2@db:5432/shop"),
            "postgres://shop:(redacted)@db:5432/shop"
        );
        assert_eq!(
            url_passwords("a=redis://:pw@r/0 b=https://example.com/x@y"),
            "a=redis://:(redacted)@r/0 b=https://example.com/x@y"
        );
        assert_eq!(url_passwords("https://user@host/"), "https://user@host/");
        assert_eq!(url_passwords("no url here"), "no url here");
        assert!(is_credential("DATABASE_URL", "postgres://u:p@h/d"));
        assert!(is_credential("API_TOKEN", "x"));
        assert!(!is_credential("RUST_LOG", "info"));
        // Hidden when shown, but kept where the agent always kept it.
        assert!(looks_secret("SESSION_COOKIE_NAME"));
        assert!(!is_credential("SESSION_COOKIE_NAME", "web_sid"));
    }

    #[test]
    fn a_json_body_shows_no_secret_value_wherever_it_is() {
        let mut body = serde_json::json!({
            "project": "shop",
            "secrets": { "API_TOKEN": "s3cr3t-value" },
            "services": [{
                "env": {
                    "AUTH_TOKEN": "plain-token-in-env",
                    "DATABASE_URL": "postgres://shop:hunter2@db/shop",
                    "RUST_LOG": "info"
                },
                "run": "serve --key s3cr3t-value"
            }]
        });
        let mut redactor = Redactor::default();
        redactor.learn(secret_values(&body));
        redactor.json(&mut body);
        let shown = body.to_string();
        for hidden in ["s3cr3t-value", "plain-token-in-env", "hunter2"] {
            assert!(!shown.contains(hidden), "{hidden} in {shown}");
        }
        assert_eq!(body["secrets"]["API_TOKEN"], REDACTED);
        assert_eq!(body["services"][0]["run"], "serve --key (redacted)");
        assert_eq!(
            body["services"][0]["env"]["DATABASE_URL"],
            "postgres://shop:(redacted)@db/shop"
        );
        assert_eq!(body["services"][0]["env"]["RUST_LOG"], "info");
        assert_eq!(body["project"], "shop");
    }

    #[test]
    fn known_values_are_hidden_but_not_short_ones() {
        let r = Redactor::new(["s3cr3t-value", "ab"]);
        assert_eq!(
            r.text("--password s3cr3t-value --x ab"),
            "--password (redacted) --x ab"
        );
        assert!(r.finds_in("x s3cr3t-value"));
        assert!(!format!("{r:?}").contains("s3cr3t"));
    }
}
