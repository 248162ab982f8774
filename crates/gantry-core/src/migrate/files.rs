//! A project's migration files: `NNNN_name.sql` in one directory, numbered
//! from 1 with no gap and no number twice, each read whole and hashed. What
//! is refused here never reaches a database.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::MigrateError;

/// At most this many migrations in a directory.
pub const MAX_FILES: usize = 10_000;
/// At most this many bytes in one migration.
pub const MAX_FILE_BYTES: u64 = 8 << 20;
/// At most this many characters in a migration's name (after its number).
pub const MAX_NAME: usize = 100;

/// One migration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migration {
    pub version: u32,
    /// The part of the file name after the number, like `create_users`.
    pub name: String,
    pub sql: String,
    /// sha256 of the file's bytes, in hex.
    pub checksum: String,
}

/// The migrations in `dir`, by version. Files that do not end in `.sql`
/// (a README) and directories are left alone; a `.sql` file whose name is
/// not `NNNN_name.sql` is refused, since it would otherwise never run.
pub fn read(dir: &Path) -> Result<Vec<Migration>, MigrateError> {
    let invalid = |problem: String| MigrateError::Invalid {
        dir: dir.to_owned(),
        problem,
    };
    let entries =
        std::fs::read_dir(dir).map_err(|e| invalid(format!("cannot read the directory: {e}")))?;
    let mut found: Vec<(u32, String, PathBuf)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| invalid(format!("cannot list the directory: {e}")))?;
        let path = entry.path();
        let Some(file) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !file.ends_with(".sql") || path.is_dir() {
            continue;
        }
        if found.len() == MAX_FILES {
            return Err(invalid(format!(
                "it holds more than {MAX_FILES} migrations"
            )));
        }
        let (version, name) =
            parse_name(&file).map_err(|why| invalid(format!("`{file}` {why}")))?;
        found.push((version, name, path));
    }
    found.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    check_numbering(&found).map_err(invalid)?;
    found
        .into_iter()
        .map(|(version, name, path)| {
            let bytes = read_bounded(&path).map_err(&invalid)?;
            let checksum = crate::artifact::hex(&Sha256::digest(&bytes));
            let sql = String::from_utf8(bytes)
                .map_err(|_| invalid(format!("`{}` is not UTF-8", path.display())))?;
            Ok(Migration {
                version,
                name,
                sql,
                checksum,
            })
        })
        .collect()
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "`{}` is over {} MiB",
            path.display(),
            MAX_FILE_BYTES >> 20
        ));
    }
    Ok(bytes)
}

/// `0003_add_orders.sql` → (3, "add_orders").
fn parse_name(file: &str) -> Result<(u32, String), String> {
    const FORM: &str = "is not named NNNN_name.sql (digits, `_`, then letters, digits, `_` or `-`)";
    let stem = file.strip_suffix(".sql").unwrap_or(file);
    let Some((number, name)) = stem.split_once('_') else {
        return Err(FORM.to_owned());
    };
    if number.is_empty()
        || number.len() > 9
        || !number.bytes().all(|b| b.is_ascii_digit())
        || name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(FORM.to_owned());
    }
    if name.len() > MAX_NAME {
        return Err(format!("has a name over {MAX_NAME} characters"));
    }
    let version: u32 = number.parse().map_err(|_| FORM.to_owned())?;
    Ok((version, name.to_owned()))
}

/// Numbers run 1, 2, 3, ... : a gap is a file lost in a merge, and a number
/// twice is two branches' migrations that would run in an order nobody chose.
fn check_numbering(found: &[(u32, String, PathBuf)]) -> Result<(), String> {
    let mut expected = 1;
    for pair in found.windows(2) {
        if pair[0].0 == pair[1].0 {
            return Err(format!(
                "two migrations have number {}: `{}` and `{}`; renumber one",
                pair[0].0, pair[0].1, pair[1].1
            ));
        }
    }
    for (version, name, _) in found {
        if *version != expected {
            return Err(if expected == 1 {
                format!("the first migration is number {version} (`{name}`); numbering starts at 1")
            } else {
                format!(
                    "number {expected} is missing: `{name}` is number {version}; numbers must follow each other"
                )
            });
        }
        expected += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    fn problem(files: &[(&str, &str)]) -> String {
        let dir = dir_with(files);
        match read(dir.path()) {
            Err(MigrateError::Invalid { problem, .. }) => problem,
            other => panic!("{files:?} was not refused: {other:?}"),
        }
    }

    #[test]
    fn migrations_are_read_in_number_order_with_their_checksums() {
        let dir = dir_with(&[
            ("0002_add_orders.sql", "create table orders (id int);"),
            ("0001_create_users.sql", "create table users (id int);"),
            ("README.md", "not a migration"),
        ]);
        let read = read(dir.path()).unwrap();
        let names: Vec<_> = read.iter().map(|m| (m.version, m.name.as_str())).collect();
        assert_eq!(names, [(1, "create_users"), (2, "add_orders")]);
        assert_eq!(
            read[0].checksum,
            crate::artifact::hex(&Sha256::digest(b"create table users (id int);"))
        );
    }

    #[test]
    fn gaps_duplicates_and_bad_names_are_refused() {
        let gap = problem(&[("0001_a.sql", ""), ("0003_c.sql", "")]);
        assert!(gap.contains("number 2 is missing"), "{gap}");
        let twice = problem(&[("0001_a.sql", ""), ("0001_b.sql", "")]);
        assert!(twice.contains("two migrations have number 1"), "{twice}");
        let start = problem(&[("0002_b.sql", "")]);
        assert!(start.contains("numbering starts at 1"), "{start}");
        let name = problem(&[("create_users.sql", "")]);
        assert!(name.contains("is not named NNNN_name.sql"), "{name}");
        let spaces = problem(&[("0001_two words.sql", "")]);
        assert!(spaces.contains("is not named NNNN_name.sql"), "{spaces}");
        let dir = dir_with(&[]);
        std::fs::write(dir.path().join("0001_a.sql"), [0xff, 0xfe]).unwrap();
        let Err(MigrateError::Invalid { problem, .. }) = read(dir.path()) else {
            panic!("a file that is not UTF-8 was read");
        };
        assert!(problem.ends_with("is not UTF-8"), "{problem}");
    }

    #[test]
    fn a_missing_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("migrations");
        let Err(MigrateError::Invalid { dir: named, .. }) = read(&gone) else {
            panic!("a missing directory was read");
        };
        assert_eq!(named, gone);
    }
}
