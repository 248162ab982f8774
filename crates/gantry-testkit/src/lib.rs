//! Test helpers: a throwaway project directory and the real `gantry` binary
//! run inside it. Integration tests pass the binary's path in (from
//! `env!("CARGO_BIN_EXE_gantry")`), so this crate never builds it itself.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test support: a failure here is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;

/// A temporary project directory, removed when dropped.
pub struct TestProject {
    dir: tempfile::TempDir,
    bin: PathBuf,
    env: Vec<(String, String)>,
}

impl TestProject {
    pub fn new(bin: impl Into<PathBuf>) -> Self {
        TestProject {
            dir: tempfile::tempdir().expect("create a temporary directory"),
            bin: bin.into(),
            env: Vec::new(),
        }
    }

    /// Writes a file relative to the project, creating directories.
    pub fn file(self, relative: &str, contents: &str) -> Self {
        let path = self.dir.path().join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create directories");
        }
        std::fs::write(&path, contents).expect("write the file");
        self
    }

    /// Sets an environment variable for every run.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `gantry ARGS` in the project directory, with colors off and no
    /// GANTRY_* variables from the caller's environment.
    pub fn gantry(&self, args: &[&str]) -> Run {
        let mut command = Command::new(&self.bin);
        command
            .args(args)
            .current_dir(self.dir.path())
            .env("NO_COLOR", "1");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("GANTRY_") {
                command.env_remove(key);
            }
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        let output = command.output().expect("run gantry");
        Run {
            args: args.iter().map(|a| a.to_string()).collect(),
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub args: Vec<String>,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// stdout as the one JSON document the output contract promises.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "`gantry {}` did not print one JSON document on stdout ({e}):\n{}\nstderr:\n{}",
                self.args.join(" "),
                self.stdout,
                self.stderr
            )
        })
    }

    /// Asserts the exit code, showing the output when it differs.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            code,
            "`gantry {}` exited {} (expected {code})\nstdout:\n{}\nstderr:\n{}",
            self.args.join(" "),
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// The workspace root, for tests that read `examples/`.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/gantry-testkit is two levels down")
        .to_owned()
}
