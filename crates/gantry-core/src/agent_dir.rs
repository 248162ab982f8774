//! The layout of an agent's state directory, spelled once for the agent
//! that keeps it and for the commands that reach into it (the socket, the
//! log). What the proxy keeps in its own directory (`proxy/`) is the
//! proxy's to name (`gantry_proxy::ProxyDir`).

use std::path::PathBuf;

use crate::host::SYSTEM_STATE_DIR;

/// The default state directory of a user other than root, under `$HOME`.
pub const USER_STATE_DIR: &str = ".local/state/gantry";

/// Where the agent keeps everything, under one state directory.
#[derive(Clone, Debug)]
pub struct Paths {
    pub root: PathBuf,
}

impl Paths {
    pub fn new(root: impl Into<PathBuf>) -> Paths {
        Paths { root: root.into() }
    }

    /// The default state directory: `$XDG_STATE_HOME/gantry`; else, for
    /// root, `/var/lib/gantry` (where the systemd unit keeps it: a root
    /// agent runs services as other users, who cannot reach into `/root`);
    /// else `~/.local/state/gantry`.
    pub fn default_root(is_root: bool) -> PathBuf {
        if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir).join("gantry");
        }
        if is_root {
            return PathBuf::from(SYSTEM_STATE_DIR);
        }
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
        home.join(USER_STATE_DIR)
    }

    /// [`Paths::default_root`] as a POSIX shell statement that sets `$d`,
    /// for a host reached over SSH.
    pub fn default_root_shell() -> String {
        format!(
            "if [ -n \"$XDG_STATE_HOME\" ]; then d=\"$XDG_STATE_HOME/gantry\"; elif [ \"$(id -u)\" = 0 ]; then d={SYSTEM_STATE_DIR}; else d=\"$HOME/{USER_STATE_DIR}\"; fi"
        )
    }

    pub fn socket(&self) -> PathBuf {
        self.root.join("agent.sock")
    }
    pub fn lock(&self) -> PathBuf {
        self.root.join("agent.lock")
    }
    pub fn database(&self) -> PathBuf {
        self.root.join("agent.db")
    }
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }
    /// Where every project's releases are.
    pub fn releases_dir(&self) -> PathBuf {
        self.root.join("releases")
    }
    pub fn releases(&self, project: &str) -> PathBuf {
        self.releases_dir().join(project)
    }
    pub fn logs(&self, project: &str) -> PathBuf {
        self.root.join("logs").join(project)
    }
    /// A project's backups, one directory a service (0700, files 0600):
    /// outside the releases, so redeploys and rollbacks leave them.
    pub fn backups(&self, project: &str) -> PathBuf {
        self.root.join("backups").join(project)
    }
    /// Work the agent does as a service's user and then reads (a SQLite
    /// backup's copy): 0711, so a user reaches only the directory of its own
    /// job, which has a random name and is that user's alone (0700).
    pub fn staging(&self) -> PathBuf {
        self.root.join("staging")
    }
    pub fn run(&self) -> PathBuf {
        self.root.join("run")
    }
    pub fn secrets(&self, project: &str) -> PathBuf {
        self.root.join("secrets").join(format!("{project}.env"))
    }
    /// The proxy's own state directory.
    pub fn proxy(&self) -> PathBuf {
        self.root.join("proxy")
    }
    pub fn proxy_log(&self) -> PathBuf {
        self.root.join("proxy.log")
    }
    pub fn proxy_pid(&self) -> PathBuf {
        self.root.join("proxy.pid")
    }
    /// The agent's own random key (0600) with which secret values are
    /// digested into services' fingerprints, so the store holds no plain
    /// hash a guess could be checked against.
    pub fn fingerprint_key(&self) -> PathBuf {
        self.root.join("fingerprint.key")
    }

    pub fn agent_log(&self) -> PathBuf {
        self.root.join("agent.log")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shell_rule_for_a_remote_host_is_default_root_s() {
        let shell = Paths::default_root_shell();
        assert!(shell.contains("d=\"$XDG_STATE_HOME/gantry\""), "{shell}");
        assert!(shell.contains("d=/var/lib/gantry;"), "{shell}");
        assert!(shell.contains("d=\"$HOME/.local/state/gantry\""), "{shell}");
    }
}
