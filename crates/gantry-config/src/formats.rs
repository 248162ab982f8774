//! The string formats of gantry.toml. Each is checked by one function that
//! says why a value is wrong; the schema names the format, the validator runs
//! the same function, and the hint tells the user what to write instead.

use crate::units::{Duration, Size};

pub struct Format {
    pub name: &'static str,
    pub check: fn(&str) -> Result<(), String>,
    pub hint: &'static str,
}

pub const FORMATS: &[Format] = &[
    Format {
        name: "duration",
        check: |s| Duration::parse_in_config(s).map(drop).map_err(|e| e.reason),
        hint: Duration::HINT,
    },
    Format {
        name: "size",
        check: |s| s.parse::<Size>().map(drop).map_err(|e| e.reason),
        hint: Size::HINT,
    },
    Format {
        name: "name",
        check: check_name,
        hint: "use lowercase letters, digits and hyphens, starting with a letter, like \"web\" or \"shop-api\"",
    },
    Format {
        name: "port",
        check: check_name,
        hint: "name the port, like \"http\", and read the assigned number from $PORT; or give a number from 1 to 65535",
    },
    Format {
        name: "env-name",
        check: check_env_name,
        hint: "use letters, digits and underscores, not starting with a digit, like \"DATABASE_URL\"",
    },
    Format {
        name: "secret-name",
        check: |s| check_secret_name(s).map_err(|why| format!("`{s}` {why}")),
        hint: "use capital letters, digits and underscores, not starting with a digit, like \"DATABASE_URL\"",
    },
    Format {
        name: "route",
        check: check_route,
        hint: "write a host name with an optional path prefix, like \"shop.example.com\" or \"example.com/api\"",
    },
    Format {
        name: "http-path",
        check: |s| {
            if s.starts_with('/') && !s.contains(char::is_whitespace) {
                Ok(())
            } else {
                Err(format!("`{s}` is not an absolute URL path"))
            }
        },
        hint: "start the path with a slash, like \"/healthz\"",
    },
    Format {
        name: "http-url",
        check: check_http_url,
        hint: "write an http:// or https:// address with a host, like \"https://hub.example.com\"",
    },
    Format {
        name: "volume",
        check: check_volume,
        hint: "write source:target or source:target:ro, where the source is a volume name or an absolute path and the target is an absolute path",
    },
    Format {
        name: "schedule",
        check: check_schedule,
        hint: "write `every DURATION`, like \"every 6h\", or cron's five fields in UTC: minute hour day-of-month month day-of-week, like \"0 3 * * *\"",
    },
    Format {
        name: "ssh-target",
        check: check_ssh_target,
        hint: "write user@address, user@address:port, or a host name from ~/.ssh/config",
    },
    Format {
        name: "release-path",
        check: check_release_path,
        hint: "name a directory inside the artifact with a relative path, like \"dist\" or \"public/site\", or \".\" for the whole artifact",
    },
    Format {
        name: "project-path",
        check: check_project_path,
        hint: "name a path inside the project, relative to it, like \".\", \"web\" or \"docker/web.Dockerfile\"",
    },
    Format {
        name: "build-stage",
        check: check_build_stage,
        hint: "name a stage of the Dockerfile (`FROM ... AS name`), like \"runtime\"",
    },
];

pub fn find(name: &str) -> Option<&'static Format> {
    FORMATS.iter().find(|f| f.name == name)
}

/// A DNS label: it ends up in host names (`web.shop.localhost`) and unit names.
pub fn check_name(s: &str) -> Result<(), String> {
    let why = if s.is_empty() {
        "is empty".to_owned()
    } else if s.len() > 63 {
        "is longer than 63 characters".to_owned()
    } else if s.chars().any(|c| c.is_ascii_uppercase()) {
        "has uppercase letters".to_owned()
    } else if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        format!("contains `{c}`")
    } else if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        "does not start with a letter".to_owned()
    } else if s.ends_with('-') {
        "ends with `-`".to_owned()
    } else {
        return Ok(());
    };
    Err(format!("`{s}` {why}"))
}

pub fn check_env_name(s: &str) -> Result<(), String> {
    let why = if s.is_empty() {
        "is empty".to_owned()
    } else if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
    {
        format!("contains `{c}`")
    } else if s.starts_with(|c: char| c.is_ascii_digit()) {
        "starts with a digit".to_owned()
    } else {
        return Ok(());
    };
    Err(format!("`{s}` {why}"))
}

/// The longest name a secret may have.
pub const SECRET_NAME_MAX: usize = 128;

/// A secret's name: an environment variable name in capitals (A-Z, 0-9 and
/// `_`, not starting with a digit), at most [`SECRET_NAME_MAX`] long; the
/// same rule for gantry.toml and `gantry secrets`. The error says why.
pub fn check_secret_name(s: &str) -> Result<(), String> {
    Err(if s.is_empty() {
        "is empty".to_owned()
    } else if s.len() > SECRET_NAME_MAX {
        format!("is longer than {SECRET_NAME_MAX} characters")
    } else if s.starts_with(|c: char| c.is_ascii_digit()) {
        "starts with a digit".to_owned()
    } else if s.contains(|c: char| c.is_ascii_lowercase()) {
        "has lowercase letters".to_owned()
    } else if let Some(c) =
        (s.chars()).find(|c| !(c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_'))
    {
        format!("contains `{}`", c.escape_debug())
    } else {
        return Ok(());
    })
}

fn check_http_url(s: &str) -> Result<(), String> {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .ok_or_else(|| format!("`{s}` is not an http:// or https:// URL"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains('@') || s.contains(char::is_whitespace) || s.len() > 2000 {
        return Err(format!("`{s}` has no host, or holds spaces or credentials"));
    }
    Ok(())
}

fn check_route(s: &str) -> Result<(), String> {
    if let Some((scheme, rest)) = s.split_once("://") {
        return Err(format!(
            "routes take no scheme: write `{rest}` without `{scheme}://`"
        ));
    }
    let (host, path) = match s.find('/') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    };
    let labels = host.strip_prefix("*.").unwrap_or(host);
    let host_ok = !labels.is_empty()
        && labels.len() <= 253
        && labels.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !host_ok {
        return Err(format!("`{host}` is not a valid host name"));
    }
    if path.contains(|c: char| c.is_whitespace() || c == '?' || c == '#') {
        return Err(format!("`{path}` is not a valid path prefix"));
    }
    Ok(())
}

fn check_volume(s: &str) -> Result<(), String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [source, target] => (*source, *target, None),
        [source, target, mode] => (*source, *target, Some(*mode)),
        _ => return Err(format!("`{s}` is not source:target")),
    };
    if source.is_empty() {
        return Err(format!("`{s}` has no source"));
    }
    if !source.starts_with('/') && !source.starts_with("./") {
        check_volume_name(source)?;
    }
    if !target.starts_with('/') {
        return Err(format!("the target `{target}` is not an absolute path"));
    }
    match mode {
        None | Some("ro") | Some("rw") => Ok(()),
        Some(other) => Err(format!("`{other}` is not a mount mode (ro or rw)")),
    }
}

fn check_volume_name(s: &str) -> Result<(), String> {
    let valid = s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if valid {
        Ok(())
    } else {
        Err(format!("`{s}` is not a valid volume name"))
    }
}

/// Cron's five fields, each `*`, a number, a range, a list or a step, within its bounds.
fn check_schedule(s: &str) -> Result<(), String> {
    crate::schedule::Schedule::parse(s).map(drop)
}

fn check_ssh_target(s: &str) -> Result<(), String> {
    crate::SshTarget::parse(s).map(drop)
}

/// A path inside a release: relative, and never climbing out of it.
pub fn check_release_path(s: &str) -> Result<(), String> {
    check_relative(
        s,
        "the release",
        "a directory of the release, not of the host",
    )
}

/// A path inside the project (a build context, a Dockerfile): relative, and
/// never climbing out of it. That it exists is checked where files are read.
pub fn check_project_path(s: &str) -> Result<(), String> {
    check_relative(s, "the project", "a path of the project, relative to it")
}

/// A Dockerfile stage name, as `docker build --target` takes it.
fn check_build_stage(s: &str) -> Result<(), String> {
    let valid = !s.is_empty()
        && s.len() <= 128
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if valid {
        Ok(())
    } else {
        Err(format!("`{s}` is not a stage name"))
    }
}

fn check_relative(s: &str, inside: &str, names: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("is empty".to_owned());
    }
    if s.len() > 4096 {
        return Err("is longer than 4096 bytes".to_owned());
    }
    if s.starts_with('/') {
        return Err(format!("`{s}` is absolute; it names {names}"));
    }
    if s.split('/').any(|segment| segment == "..") {
        return Err(format!("`{s}` climbs out of {inside} with `..`"));
    }
    if s.contains(['\0', '\\']) {
        return Err(format!("`{s}` holds a NUL or a backslash"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(format: &str, value: &str) -> bool {
        (find(format).expect(format).check)(value).is_ok()
    }

    #[test]
    fn routes() {
        assert!(ok("route", "shop.example.com"));
        assert!(ok("route", "example.com/api"));
        assert!(ok("route", "*.example.com"));
        assert!(ok("route", "localhost"));
        assert!(!ok("route", "exa mple.com"));
        assert!(!ok("route", "/api"));
        assert!(!ok("route", "-bad.example.com"));
        assert!(!ok("route", "a..b"));
    }

    #[test]
    fn cron_fields_are_bounded() {
        assert!(ok("schedule", "0 3 * * *"));
        assert!(ok("schedule", "*/15 0-6 1,15 * 1-5"));
        assert!(!ok("schedule", "0 3 * *"));
        assert!(!ok("schedule", "60 3 * * *"));
        assert!(!ok("schedule", "0 3 * * mon"));
        assert!(!ok("schedule", "*/0 3 * * *"));
        assert!(ok("schedule", "every 6h"));
        assert!(!ok("schedule", "every 6"));
    }

    #[test]
    fn volumes_and_ssh_targets() {
        assert!(ok("volume", "pgdata:/var/lib/postgresql/data"));
        assert!(ok("volume", "/srv/data:/data:ro"));
        assert!(!ok("volume", "pgdata"));
        assert!(!ok("volume", "pgdata:relative"));
        assert!(!ok("volume", "a:/b:rx"));
        assert!(ok("ssh-target", "deploy@203.0.113.10"));
        assert!(ok("ssh-target", "deploy@203.0.113.10:2222"));
        assert!(ok("ssh-target", "web-1"));
        assert!(ok("ssh-target", "root@[2001:db8::1]:22"));
        assert!(!ok("ssh-target", "@host"));
        assert!(!ok("ssh-target", "deploy@host:ssh"));
        assert!(!ok("ssh-target", "-oProxyCommand=sh@x"));
    }

    #[test]
    fn names() {
        assert!(ok("name", "web"));
        assert!(ok("name", "shop-api2"));
        assert!(!ok("name", "Web"));
        assert!(!ok("name", "2web"));
        assert!(!ok("name", "web_api"));
        assert!(ok("env-name", "DATABASE_URL"));
        assert!(ok("env-name", "_x1"));
        assert!(!ok("env-name", "1X"));
        assert!(!ok("env-name", "DATABASE-URL"));
    }

    #[test]
    fn release_paths_stay_inside_the_release() {
        for good in ["dist", "public/site", ".", "./build/", "a..b"] {
            assert!(ok("release-path", good), "{good}");
        }
        for bad in ["", "/srv/www", "../outside", "dist/../../x", "a\\b"] {
            assert!(!ok("release-path", bad), "{bad}");
        }
    }

    #[test]
    fn build_paths_stay_inside_the_project() {
        for good in [".", "web", "docker/web.Dockerfile", "./web/"] {
            assert!(ok("project-path", good), "{good}");
        }
        for bad in ["", "/srv/web", "../sibling", "web/../../x"] {
            assert!(!ok("project-path", bad), "{bad}");
        }
        assert!(ok("build-stage", "runtime"));
        assert!(!ok("build-stage", "run time"));
        assert!(!ok("build-stage", "-x"));
    }
}
