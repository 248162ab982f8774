//! `gantry init`: a commented starter gantry.toml that validates as written.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::{Error, config};

const TEMPLATE: &str = include_str!("init.toml");

#[derive(Debug, Serialize)]
pub struct InitReport {
    pub file: PathBuf,
    pub project: String,
    pub next: Vec<String>,
}

/// A project name from a directory name: lowercase, hyphens for anything else.
pub fn project_name(dir: &Path) -> String {
    let raw = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let mut name = String::with_capacity(raw.len());
    for c in raw.chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            name.push(c);
        } else if !name.is_empty() && !name.ends_with('-') {
            name.push('-');
        }
    }
    let name = name.trim_matches('-').to_owned();
    match name.chars().next() {
        Some(c) if c.is_ascii_lowercase() => name.chars().take(63).collect(),
        Some(_) => format!("app-{name}").chars().take(63).collect(),
        None => "app".to_owned(),
    }
}

/// The starter file's text for a project called `name`.
pub fn starter(name: &str) -> String {
    TEMPLATE.replace("{{name}}", name)
}

/// Writes the starter file in `dir`; `dir` may name the file itself
/// (`gantry init app/gantry.toml`).
pub fn init(dir: &Path, name: Option<&str>, force: bool) -> Result<InitReport, Error> {
    let dir = match dir.parent() {
        Some(parent) if dir.file_name() == Some(config::FILE_NAME.as_ref()) && !dir.is_dir() => {
            parent
        }
        _ => dir,
    };
    let path = dir.join(config::FILE_NAME);
    if path.exists() && !force {
        return Err(Error::InitExists { path });
    }
    let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
    let name = name.map_or_else(|| project_name(&absolute), str::to_owned);
    let text = starter(&name);
    // Refuse to write a file that would not validate (a bad --name, say).
    config::parse(&path.display().to_string(), &text, &|_| None)?;
    crate::write_atomic(&path, text.as_bytes())?;
    Ok(InitReport {
        file: path,
        project: name,
        next: vec!["gantry validate".to_owned(), "gantry show".to_owned()],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Named as the file itself, the starter goes there, and one already
    /// there is refused as in its directory (`init.exists`), not an I/O error.
    #[test]
    fn init_may_name_the_file_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("gantry.toml");
        let made = init(&file, Some("shop"), false).expect("written");
        assert_eq!(made.file, file);
        let again = init(&file, None, false).expect_err("it exists");
        assert_eq!(again.code(), "init.exists", "{again}");
    }

    #[test]
    fn names_come_from_the_directory() {
        assert_eq!(project_name(Path::new("/x/My Shop")), "my-shop");
        assert_eq!(project_name(Path::new("/x/shop_api.v2")), "shop-api-v2");
        assert_eq!(project_name(Path::new("/x/2fast")), "app-2fast");
        assert_eq!(project_name(Path::new("/")), "app");
    }

    #[test]
    fn starter_file_validates() {
        let text = starter("shop");
        if let Err(e) = config::parse("gantry.toml", &text, &|_| None) {
            panic!("the starter file must validate: {e}");
        }
    }
}
