//! The encrypted store of the project's secrets: one file per environment,
//! `.gantry/secrets/<env>.age`, encrypted with age to an X25519 identity
//! kept in the user's config directory (`$XDG_CONFIG_HOME/gantry/identity.txt`,
//! else `~/.config/gantry/identity.txt`), never in the project. The files are
//! safe to commit; the identity is not.
//!
//! This module never prints a value, never puts one in an error, and keeps
//! them out of `Debug`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use age::secrecy::ExposeSecret as _;
use serde::{Deserialize, Serialize};

use crate::file::FileError;

/// A value longer than this is refused: secrets are tokens and URLs, not files.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// A name longer than this is refused.
pub const MAX_NAME_LEN: usize = gantry_config::SECRET_NAME_MAX;
/// At most this many secrets per environment.
pub const MAX_SECRETS: usize = 1000;
/// An encrypted file or identity larger than this is not one Gantry wrote.
const MAX_FILE_BYTES: u64 = 128 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("no key to decrypt {}: {} does not exist", file.display(), identity.display())]
    KeyMissing { file: PathBuf, identity: PathBuf },
    #[error("{} was encrypted to another key than {}", file.display(), identity.display())]
    KeyMismatch { file: PathBuf, identity: PathBuf },
    #[error("{} is damaged or was changed by hand: {message}", path.display())]
    Corrupt { path: PathBuf, message: String },
    #[error("`{name}` is not a valid secret name: {problem}")]
    NameInvalid { name: String, problem: String },
    /// A line of a dotenv file that is not a secret: named by its number,
    /// never its text (it may hold a value).
    #[error("line {line} {problem}")]
    LineInvalid { line: usize, problem: String },
    #[error("secret `{name}` {problem}")]
    ValueInvalid { name: String, problem: String },
    #[error("environment `{environment}` has no secret `{name}`")]
    NotFound { environment: String, name: String },
    #[error("no config directory for the key: neither XDG_CONFIG_HOME nor HOME is set")]
    NoConfigDir,
    #[error("the key {} {problem}", identity.display())]
    KeyExposed { identity: PathBuf, problem: String },
    #[error("the key {} lies inside the project {}", identity.display(), project.display())]
    KeyInProject { identity: PathBuf, project: PathBuf },
    #[error(transparent)]
    Io(#[from] FileError),
}

impl SecretsError {
    pub fn code(&self) -> crate::Code {
        use crate::Code;
        match self {
            SecretsError::KeyMissing { .. } | SecretsError::NoConfigDir => Code::SecretsKeyMissing,
            SecretsError::KeyMismatch { .. } | SecretsError::KeyInProject { .. } => {
                Code::SecretsKeyMismatch
            }
            SecretsError::KeyExposed { .. } => Code::SecretsKeyExposed,
            SecretsError::Corrupt { .. } => Code::SecretsCorrupt,
            SecretsError::NameInvalid { .. }
            | SecretsError::ValueInvalid { .. }
            | SecretsError::LineInvalid { .. } => Code::SecretsInvalid,
            SecretsError::NotFound { .. } => Code::SecretsNotFound,
            SecretsError::Io(_) => Code::IoFailed,
        }
    }

    pub fn hint(&self) -> Option<String> {
        Some(match self {
            SecretsError::KeyMissing { identity, .. } => format!(
                "copy the identity that encrypted it to {} (mode 0600), or delete the file and set the secrets again",
                identity.display()
            ),
            SecretsError::KeyMismatch { identity, .. } => format!(
                "put the identity that encrypted it at {} (XDG_CONFIG_HOME chooses the directory)",
                identity.display()
            ),
            SecretsError::Corrupt { .. } => {
                "restore it from version control, or delete it and set the secrets again".to_owned()
            }
            SecretsError::NameInvalid { .. } => format!(
                "use an environment variable name: A-Z, 0-9 and _, not starting with a digit, at most {MAX_NAME_LEN} characters"
            ),
            SecretsError::LineInvalid { .. } => format!(
                "write one NAME=value a line (blank lines, # comments, `export ` and quotes are fine); names are A-Z, 0-9 and _, at most {MAX_NAME_LEN} characters"
            ),
            SecretsError::ValueInvalid { .. } => format!(
                "a value is one line of at most {} KiB; pipe it on stdin: `printf %s VALUE | gantry secrets set NAME`",
                MAX_VALUE_BYTES / 1024
            ),
            SecretsError::NotFound { .. } => "`gantry secrets list` shows the names".to_owned(),
            SecretsError::NoConfigDir => "set HOME or XDG_CONFIG_HOME".to_owned(),
            SecretsError::KeyExposed { identity, .. } => format!(
                "make it private with `chmod 600 {}`; if others could read it, set the secrets again under a new key",
                identity.display()
            ),
            SecretsError::KeyInProject { .. } => {
                "point XDG_CONFIG_HOME outside the project: the key must never be committed"
                    .to_owned()
            }
            SecretsError::Io(_) => return None,
        })
    }
}

/// The names and change times of an environment's secrets, never values.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SecretEntry {
    pub name: String,
    pub environment: String,
    /// Milliseconds since the Unix epoch.
    pub changed_at: u64,
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct Stored {
    value: String,
    changed_at: u64,
}

#[derive(Default, Serialize, Deserialize)]
struct Plain {
    version: u32,
    secrets: BTreeMap<String, Stored>,
}

/// The user's key: where it is, and the identity once read or made.
pub struct Key {
    path: PathBuf,
    identity: Option<age::x25519::Identity>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("path", &self.path).finish()
    }
}

impl Key {
    /// The key's place from the environment: `$XDG_CONFIG_HOME/gantry/identity.txt`,
    /// else `$HOME/.config/gantry/identity.txt`.
    pub fn locate(env: &dyn Fn(&str) -> Option<String>) -> Result<Key, SecretsError> {
        let base = env("XDG_CONFIG_HOME")
            .filter(|d| Path::new(d).is_absolute())
            .map(PathBuf::from)
            .or_else(|| env("HOME").map(|h| Path::new(&h).join(".config")))
            .ok_or(SecretsError::NoConfigDir)?;
        Ok(Key::at(base.join("gantry").join("identity.txt")))
    }

    pub fn at(path: PathBuf) -> Key {
        Key {
            path,
            identity: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The identity, if the file exists.
    fn read(&mut self) -> Result<Option<&age::x25519::Identity>, SecretsError> {
        if self.identity.is_none() {
            let text = match read_private(&self.path) {
                Ok(Ok(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
                Ok(Err(mode)) => {
                    return Err(SecretsError::KeyExposed {
                        identity: self.path.clone(),
                        problem: format!(
                            "can be read or written by other users (mode {:o}), as a key must not",
                            mode & 0o777
                        ),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(source) => return Err(io("read", &self.path)(source)),
            };
            let line = text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with('#'))
                .unwrap_or_default();
            let identity =
                line.parse::<age::x25519::Identity>()
                    .map_err(|_| SecretsError::Corrupt {
                        path: self.path.clone(),
                        message: "it holds no AGE-SECRET-KEY line".to_owned(),
                    })?;
            self.identity = Some(identity);
        }
        Ok(self.identity.as_ref())
    }

    /// The identity, made (0600, in a 0700 directory) if there is none.
    fn read_or_create(&mut self) -> Result<&age::x25519::Identity, SecretsError> {
        if self.read()?.is_none() {
            self.install(age::x25519::Identity::generate())?;
        }
        self.identity.as_ref().ok_or(SecretsError::NoConfigDir)
    }

    /// Saves `identity` as the key unless another gantry saved one since
    /// this one looked: then that one is the key. Replacing it would leave
    /// what the other encrypted unreadable.
    fn install(
        &mut self,
        identity: age::x25519::Identity,
    ) -> Result<&age::x25519::Identity, SecretsError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let io = |action| io(action, &self.path);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io("create the directory of"))?;
        let text = format!(
            "# gantry's key for the project secrets it encrypts; never commit it\n# public key: {}\n{}\n",
            identity.to_public(),
            identity.to_string().expose_secret()
        );
        // Written whole beside it, then linked in only where no file is.
        let whole = dir.join(format!(".identity.{}.tmp", std::process::id()));
        crate::file::write_atomic(&whole, text.as_bytes(), 0o600).map_err(io("write"))?;
        let linked = std::fs::hard_link(&whole, &self.path);
        let _ = std::fs::remove_file(&whole);
        match linked {
            Ok(()) => Ok(self.identity.insert(identity)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                self.read()?.ok_or(SecretsError::NoConfigDir)
            }
            Err(e) => Err(io("write")(e)),
        }
    }
}

use std::os::unix::fs::DirBuilderExt as _;

/// Makes an I/O error about `path` into a [`SecretsError`].
fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SecretsError {
    FileError::of(action, path)
}

/// The file's bytes when only its owner may read or write it (as ssh
/// asks of a private key); else its mode.
fn read_private(path: &Path) -> std::io::Result<Result<Vec<u8>, u32>> {
    use std::io::Read as _;
    use std::os::unix::fs::PermissionsExt as _;
    let file = std::fs::File::open(path)?;
    let mode = file.metadata()?.permissions().mode();
    if mode & 0o077 != 0 {
        return Ok(Err(mode));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::other(
            "the file is larger than Gantry writes",
        ));
    }
    Ok(Ok(bytes))
}

fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::other(
            "the file is larger than Gantry writes",
        ));
    }
    Ok(bytes)
}

/// One environment's secrets, decrypted in memory.
pub struct Store {
    path: PathBuf,
    environment: String,
    plain: Plain,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("names", &self.plain.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Where an environment's encrypted secrets live in the project.
pub fn store_path(project_dir: &Path, environment: &str) -> PathBuf {
    project_dir
        .join(".gantry")
        .join("secrets")
        .join(format!("{environment}.age"))
}

/// The key must never be committed with the project.
fn refuse_key_in(project_dir: &Path, key: &Key) -> Result<(), SecretsError> {
    if key.path.starts_with(project_dir) {
        return Err(SecretsError::KeyInProject {
            identity: key.path.clone(),
            project: project_dir.to_owned(),
        });
    }
    Ok(())
}

/// Checks a secret's name with gantry.toml's rule ([`gantry_config::check_secret_name`]).
pub fn check_name(name: &str) -> Result<(), SecretsError> {
    gantry_config::check_secret_name(name).map_err(|why| SecretsError::NameInvalid {
        name: name.chars().take(MAX_NAME_LEN).collect(),
        problem: format!("it {why}"),
    })
}

/// Checks a value: one line (the agent keeps `NAME=value` lines), bounded.
/// The error never holds the value.
pub fn check_value(name: &str, value: &str) -> Result<(), SecretsError> {
    let problem = if value.is_empty() {
        Some("is empty".to_owned())
    } else if value.len() > MAX_VALUE_BYTES {
        Some(format!("is longer than {} KiB", MAX_VALUE_BYTES / 1024))
    } else if value.contains(['\n', '\r', '\0']) {
        Some("has a line break or NUL".to_owned())
    } else {
        None
    };
    match problem {
        Some(problem) => Err(SecretsError::ValueInvalid {
            name: name.to_owned(),
            problem,
        }),
        None => Ok(()),
    }
}

impl Store {
    /// The environment's secrets; none if its file does not exist yet.
    /// A file that exists needs the key that encrypted it.
    pub fn open(
        project_dir: &Path,
        environment: &str,
        key: &mut Key,
    ) -> Result<Store, SecretsError> {
        let path = store_path(project_dir, environment);
        refuse_key_in(project_dir, key)?;
        let bytes = match read_bounded(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Store {
                    path,
                    environment: environment.to_owned(),
                    plain: Plain {
                        version: 1,
                        secrets: BTreeMap::new(),
                    },
                });
            }
            Err(source) => return Err(io("read", &path)(source)),
        };
        let Some(identity) = key.read()? else {
            return Err(SecretsError::KeyMissing {
                file: path,
                identity: key.path.clone(),
            });
        };
        let plain = match age::decrypt(identity, &bytes) {
            Ok(plain) => plain,
            Err(age::DecryptError::NoMatchingKeys) => {
                return Err(SecretsError::KeyMismatch {
                    file: path,
                    identity: key.path.clone(),
                });
            }
            Err(e) => {
                return Err(SecretsError::Corrupt {
                    path,
                    message: e.to_string(),
                });
            }
        };
        let plain: Plain = serde_json::from_slice(&plain).map_err(|e| SecretsError::Corrupt {
            path: path.clone(),
            message: format!("its contents are not Gantry's ({:?} error)", e.classify()),
        })?;
        for (name, stored) in &plain.secrets {
            check_name(name)
                .and_then(|()| check_value(name, &stored.value))
                .map_err(|e| SecretsError::Corrupt {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
        }
        Ok(Store {
            path,
            environment: environment.to_owned(),
            plain,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets a secret; returns whether its value changed. `now` is ms since the epoch.
    pub fn set(&mut self, name: &str, value: &str, now: u64) -> Result<bool, SecretsError> {
        check_name(name)?;
        check_value(name, value)?;
        if let Some(stored) = self.plain.secrets.get(name) {
            if stored.value == value {
                return Ok(false);
            }
        } else if self.plain.secrets.len() >= MAX_SECRETS {
            return Err(SecretsError::ValueInvalid {
                name: name.to_owned(),
                problem: format!(
                    "would be one more than the {MAX_SECRETS} an environment may hold"
                ),
            });
        }
        self.plain.secrets.insert(
            name.to_owned(),
            Stored {
                value: value.to_owned(),
                changed_at: now,
            },
        );
        Ok(true)
    }

    pub fn remove(&mut self, name: &str) -> Result<(), SecretsError> {
        self.plain
            .secrets
            .remove(name)
            .map(drop)
            .ok_or_else(|| SecretsError::NotFound {
                environment: self.environment.clone(),
                name: name.chars().take(MAX_NAME_LEN).collect(),
            })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.plain.secrets.get(name).map(|s| s.value.as_str())
    }

    /// Every secret's value, for a deploy (and for a `Redactor` to learn).
    pub fn values(&self) -> BTreeMap<String, String> {
        self.plain
            .secrets
            .iter()
            .map(|(name, stored)| (name.clone(), stored.value.clone()))
            .collect()
    }

    pub fn entries(&self) -> Vec<SecretEntry> {
        self.plain
            .secrets
            .iter()
            .map(|(name, stored)| SecretEntry {
                name: name.clone(),
                environment: self.environment.clone(),
                changed_at: stored.changed_at,
            })
            .collect()
    }

    /// Encrypts and writes the file atomically, making the key on first use.
    pub fn save(&self, key: &mut Key) -> Result<(), SecretsError> {
        let recipient = key.read_or_create()?.to_public();
        let plain = serde_json::to_vec(&self.plain)
            .map_err(|e| io("encode", &self.path)(std::io::Error::other(e.to_string())))?;
        let sealed = age::encrypt(&recipient, &plain)
            .map_err(|e| io("encrypt", &self.path)(std::io::Error::other(e.to_string())))?;
        let io = |action| io(action, &self.path);
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io("create the directory of"))?;
        crate::file::write_atomic(&self.path, &sealed, 0o644).map_err(io("write"))
    }
}

/// `NAME=value` lines of a dotenv file: blank lines and `#` comments
/// skipped, an `export ` prefix allowed, one pair of surrounding quotes
/// taken off. A bad line is named by its number, never its value.
pub fn parse_dotenv(text: &str) -> Result<Vec<(String, String)>, SecretsError> {
    let mut pairs = Vec::new();
    for (at, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let bad = |problem: String| SecretsError::LineInvalid {
            line: at + 1,
            problem,
        };
        let Some((name, value)) = line.split_once('=') else {
            return Err(bad("is not NAME=value".to_owned()));
        };
        let name = name.trim();
        // The reason only: the text before `=` may be most of a value
        // (base64 padding, a URL's query).
        gantry_config::check_secret_name(name).map_err(|why| {
            bad(format!(
                "does not start with a secret's name: the name {why}"
            ))
        })?;
        let value = value.trim();
        let value = [('"', '"'), ('\'', '\'')]
            .iter()
            .find_map(|(open, close)| {
                value
                    .strip_prefix(*open)
                    .and_then(|v| v.strip_suffix(*close))
            })
            .unwrap_or(value);
        check_value(name, value)?;
        pairs.push((name.to_owned(), value.to_owned()));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, tempfile::TempDir, Key) {
        let project = tempfile::tempdir().expect("tempdir");
        let config = tempfile::tempdir().expect("tempdir");
        let key = Key::at(config.path().join("gantry/identity.txt"));
        (project, config, key)
    }

    #[test]
    fn a_secret_set_and_saved_reads_back_with_its_change_time() {
        let (project, _config, mut key) = setup();
        let mut store = Store::open(project.path(), "prod", &mut key).expect("open");
        assert!(store.set("API_TOKEN", "tok-123456", 42).expect("set"));
        store.save(&mut key).expect("save");
        let mut key = Key::at(key.path().to_owned());
        let again = Store::open(project.path(), "prod", &mut key).expect("open");
        assert_eq!(again.get("API_TOKEN"), Some("tok-123456"));
        assert_eq!(
            again.entries(),
            vec![SecretEntry {
                name: "API_TOKEN".to_owned(),
                environment: "prod".to_owned(),
                changed_at: 42
            }]
        );
    }

    #[test]
    fn a_key_another_gantry_made_meanwhile_is_kept_not_replaced() {
        let (_project, _config, mut first) = setup();
        let made = first.read_or_create().expect("first key").to_public();
        // The second looked before the first saved its key.
        let mut second = Key::at(first.path().to_owned());
        let kept = second
            .install(age::x25519::Identity::generate())
            .expect("the first key")
            .to_public();
        assert_eq!(kept.to_string(), made.to_string());
        let mut again = Key::at(first.path().to_owned());
        let on_disk = again.read().expect("read").expect("a key").to_public();
        assert_eq!(on_disk.to_string(), made.to_string());
    }

    #[test]
    fn the_key_is_made_0600_and_the_file_holds_no_plaintext() {
        use std::os::unix::fs::PermissionsExt as _;
        let (project, _config, mut key) = setup();
        let mut store = Store::open(project.path(), "prod", &mut key).expect("open");
        store
            .set("DATABASE_URL", "postgres://u:hunter2-very-secret@db/x", 1)
            .expect("set");
        store.save(&mut key).expect("save");
        let mode = std::fs::metadata(key.path())
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let bytes = std::fs::read(store.path()).expect("read");
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("hunter2-very-secret"));
        assert!(!text.contains("DATABASE_URL"), "names are encrypted too");
    }

    #[test]
    fn a_key_others_can_read_is_refused_until_made_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let (project, _config, mut key) = setup();
        let mut store = Store::open(project.path(), "prod", &mut key).expect("open");
        store.set("TOKEN", "t0k3n-value", 1).expect("set");
        store.save(&mut key).expect("save");
        let path = key.path().to_owned();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = Store::open(project.path(), "prod", &mut Key::at(path.clone()))
            .expect_err("a key others can read is refused");
        assert_eq!(err.code(), crate::Code::SecretsKeyExposed);
        assert!(err.to_string().contains("644"), "{err}");
        assert!(err.hint().unwrap_or_default().contains("chmod 600"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let store = Store::open(project.path(), "prod", &mut Key::at(path)).expect("private again");
        assert_eq!(store.get("TOKEN"), Some("t0k3n-value"));
    }

    #[test]
    fn a_changed_byte_in_the_file_is_detected() {
        let (project, _config, mut key) = setup();
        let mut store = Store::open(project.path(), "prod", &mut key).expect("open");
        store.set("API_TOKEN", "tok-123456", 1).expect("set");
        store.save(&mut key).expect("save");
        let mut bytes = std::fs::read(store.path()).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(store.path(), &bytes).expect("write");
        let err = Store::open(project.path(), "prod", &mut key).expect_err("tampered");
        assert_eq!(err.code(), crate::Code::SecretsCorrupt, "{err}");
    }

    #[test]
    fn another_identity_is_refused_and_a_missing_one_named() {
        let (project, _config, mut key) = setup();
        let mut store = Store::open(project.path(), "prod", &mut key).expect("open");
        store.set("API_TOKEN", "tok-123456", 1).expect("set");
        store.save(&mut key).expect("save");

        let other = tempfile::tempdir().expect("tempdir");
        let mut missing = Key::at(other.path().join("identity.txt"));
        let err = Store::open(project.path(), "prod", &mut missing).expect_err("no key");
        assert_eq!(err.code(), crate::Code::SecretsKeyMissing);
        assert!(err.hint().unwrap_or_default().contains("identity.txt"));

        // Another key, made by saving another project's store.
        let elsewhere = tempfile::tempdir().expect("tempdir");
        let mut theirs = Store::open(elsewhere.path(), "prod", &mut missing).expect("open");
        theirs.set("X", "yyyy", 1).expect("set");
        theirs.save(&mut missing).expect("save");
        let err = Store::open(project.path(), "prod", &mut missing).expect_err("wrong key");
        assert_eq!(err.code(), crate::Code::SecretsKeyMismatch, "{err}");
    }

    #[test]
    fn a_key_inside_the_project_is_refused() {
        let project = tempfile::tempdir().expect("tempdir");
        let mut key = Key::at(project.path().join(".config/gantry/identity.txt"));
        let err = Store::open(project.path(), "prod", &mut key).expect_err("refused");
        assert!(matches!(err, SecretsError::KeyInProject { .. }));
    }

    #[test]
    fn bad_names_and_values_are_refused_without_echoing_the_value() {
        assert!(check_name("lower").is_err());
        assert!(check_name("1ABC").is_err());
        assert!(check_name(&"A".repeat(MAX_NAME_LEN + 1)).is_err());
        assert!(check_name("DATABASE_URL").is_ok());
        let err = check_value("X", "line\nbreak-secret").expect_err("refused");
        assert!(!err.to_string().contains("break-secret"));
        assert!(check_value("X", &"a".repeat(MAX_VALUE_BYTES + 1)).is_err());
    }

    #[test]
    fn dotenv_lines_are_read_with_comments_exports_and_quotes() {
        let pairs = parse_dotenv("# c\n\nexport A=1\nB=\"two words\"\nC='x=y'\n").expect("parse");
        assert_eq!(
            pairs,
            vec![
                ("A".to_owned(), "1".to_owned()),
                ("B".to_owned(), "two words".to_owned()),
                ("C".to_owned(), "x=y".to_owned())
            ]
        );
        let err = parse_dotenv("A=1\nnot a pair\n").expect_err("bad");
        assert!(err.to_string().contains("line 2"), "{err}");
        assert_eq!(err.to_string(), "line 2 is not NAME=value");
        assert!(
            err.hint()
                .is_some_and(|h| h.contains("one NAME=value a line"))
        );
        let err = parse_dotenv("A=1\n\ndGhpcyBpcyBh=\n").expect_err("bad");
        assert_eq!(
            err.to_string(),
            "line 3 does not start with a secret's name: the name has lowercase letters"
        );
    }
}
