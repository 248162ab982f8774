//! `.gantryignore`: the few glob rules a snapshot honours.

use std::fs;
use std::io;
use std::path::Path;

use super::{ArtifactError, IGNORE_FILE, io_error};

/// The rules of a `.gantryignore`: one pattern a line, `#` comments.
///
/// - `*` matches any run of characters within one path component, `?` one
///   character (`**` is not special).
/// - A pattern without `/` matches a name at any depth: `*.log`, `tmp`.
/// - A pattern with `/` matches the path from the root: `docs/*.md`,
///   `/build` (a leading `/` only anchors).
/// - A trailing `/` matches directories only: `cache/`.
/// - An ignored directory is not entered. Negation (`!`) is refused rather
///   than half-supported.
#[derive(Debug, Default)]
pub(super) struct Ignore {
    patterns: Vec<Pattern>,
}

#[derive(Debug)]
struct Pattern {
    glob: Vec<char>,
    anchored: bool,
    dir_only: bool,
}

impl Ignore {
    pub(super) fn load(root: &Path) -> Result<Ignore, ArtifactError> {
        let path = root.join(IGNORE_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => Ignore::parse(&text).map_err(|(line, message)| ArtifactError::IgnoreFile {
                path,
                line,
                message,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Ignore::default()),
            Err(e) => Err(io_error("read", &path)(e)),
        }
    }

    pub(super) fn parse(text: &str) -> Result<Ignore, (usize, &'static str)> {
        let mut patterns = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.starts_with('!') {
                return Err((index + 1, "negated patterns (`!`) are not supported"));
            }
            let dir_only = line.ends_with('/');
            let rooted = line.starts_with('/');
            let glob = line.trim_start_matches('/').trim_end_matches('/');
            if glob.is_empty() {
                return Err((index + 1, "the pattern matches nothing"));
            }
            patterns.push(Pattern {
                glob: glob.chars().collect(),
                anchored: rooted || glob.contains('/'),
                dir_only,
            });
        }
        Ok(Ignore { patterns })
    }

    /// Whether `relative` (a `/`-separated path from the root) is ignored.
    pub(super) fn matches(&self, relative: &str, is_dir: bool) -> bool {
        let full: Vec<char> = relative.chars().collect();
        let name_start = full.iter().rposition(|&c| c == '/').map_or(0, |i| i + 1);
        self.patterns.iter().any(|p| {
            (is_dir || !p.dir_only)
                && glob_match(
                    &p.glob,
                    if p.anchored {
                        &full
                    } else {
                        &full[name_start..]
                    },
                )
        })
    }
}

/// `*` and `?` wildcards that never match a `/`.
pub(super) fn glob_match(pattern: &[char], text: &[char]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some('?') if text[t] != '/' => {
                p += 1;
                t += 1;
            }
            Some(&c) if c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) if text[st] != '/' => {
                    star = Some((sp, st + 1));
                    p = sp + 1;
                    t = st + 1;
                }
                _ => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}
