//! The ports the agent hands to instances as `$PORT`.
//!
//! A port is leased in the store before the instance that uses it is
//! started, so a restarted agent never hands out a port it already gave, and
//! the search resumes round-robin after the last port leased, so a port just
//! given back is not reused at once (a draining connection or a slow client
//! may still be aimed at it).
//!
//! It must never hand out a port that is leased, or that anything on the host
//! is listening on right now. Leases are the store's; this type keeps no
//! state of its own, so clones agree.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::ops::RangeInclusive;

use crate::store::{Store, StoreError};

/// The range used when the agent's settings name none.
pub const DEFAULT_RANGE: RangeInclusive<u16> = 20_000..=29_999;

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error(
        "no free port in {start}..={end}: {leased} leased to instances, {busy} in use by other programs"
    )]
    Exhausted {
        start: u16,
        end: u16,
        leased: usize,
        busy: usize,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PortError {
    /// What went wrong, as a short name for tests to match on.
    #[cfg(test)]
    pub fn code(&self) -> &'static str {
        match self {
            PortError::Exhausted { .. } => "ports.exhausted",
            PortError::Store(e) => e.code(),
        }
    }
}

/// Leases free ports from a range. Port 0 is never handed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortAllocator {
    range: RangeInclusive<u16>,
    claims: Option<HostClaims>,
}

/// Claims on ports shared by the agents of one user on this host: a file per
/// port, created exclusively, naming its owner. A port an agent has leased
/// but whose service is not listening yet looks free to the bind test; the
/// claim is what keeps a second agent off it.
///
/// The directory is writable by the agents' user only (root's agents share
/// `/run/gantry-ports`, another user's `/tmp/gantry-ports-<uid>`, each 0700
/// and checked to be theirs), so no other local user can plant claims and
/// block allocation. Agents of different users never see each other's
/// claims: between them, the bind test is what holds, so give them disjoint
/// port ranges (`--ports`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostClaims {
    dir: std::path::PathBuf,
    /// Who this agent is: its state directory.
    owner: String,
}

/// A claim older than this, on a port nobody listens on, was left by an agent
/// that is gone (or by an instance that never started): it may be taken over.
const STALE_CLAIM: std::time::Duration = std::time::Duration::from_secs(600);

impl HostClaims {
    /// Claims in this user's directory for the host, or `None` (with a
    /// warning) when that directory cannot be made or is not private to the
    /// user: the store's leases and the bind test still hold then.
    pub fn for_host(owner: &std::path::Path) -> Option<HostClaims> {
        let uid = rustix::process::geteuid();
        let dir = if uid.is_root() {
            std::path::PathBuf::from("/run/gantry-ports")
        } else {
            std::env::temp_dir().join(format!("gantry-ports-{}", uid.as_raw()))
        };
        match private_dir(&dir, uid) {
            Ok(()) => Some(HostClaims::new(dir, owner)),
            Err(why) => {
                tracing::warn!(dir = %dir.display(), %why,
                    "not claiming ports host-wide: the directory is not this user's alone");
                None
            }
        }
    }

    pub fn new(dir: std::path::PathBuf, owner: &std::path::Path) -> HostClaims {
        HostClaims {
            dir,
            owner: owner.display().to_string(),
        }
    }

    fn path(&self, port: u16) -> std::path::PathBuf {
        self.dir.join(port.to_string())
    }

    /// Claims `port` for this agent, or says another agent holds it.
    fn claim(&self, port: u16) -> bool {
        use std::io::Write;
        let path = self.path(port);
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut file) => {
                    let _ = writeln!(file, "{}", self.owner);
                    return true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = std::fs::read_to_string(&path).unwrap_or_default();
                    let stale = std::fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > STALE_CLAIM);
                    // Ours (the store does not lease it, or we would not be here),
                    // or an old one on a port nobody uses: take it over.
                    if owner.trim() == self.owner || (stale && is_free(port)) {
                        let _ = std::fs::remove_file(&path);
                        continue;
                    }
                    return false;
                }
                // No shared directory to be had: leases in the store still hold.
                Err(_) => return true,
            }
        }
        false
    }

    fn release(&self, port: u16) {
        let path = self.path(port);
        if std::fs::read_to_string(&path).is_ok_and(|owner| owner.trim() == self.owner) {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Default for PortAllocator {
    fn default() -> Self {
        PortAllocator::new(DEFAULT_RANGE)
    }
}

impl PortAllocator {
    /// An allocator over `range`. An empty range is allowed and has no ports.
    pub fn new(range: RangeInclusive<u16>) -> PortAllocator {
        PortAllocator {
            range,
            claims: None,
        }
    }

    /// Also claims each port host-wide, so agents of other state directories
    /// on this host never get the same port.
    pub fn with_claims(mut self, claims: HostClaims) -> PortAllocator {
        self.claims = Some(claims);
        self
    }

    /// Leases a port to `instance_id`: one neither leased nor in use, the
    /// first such after the last port leased (wrapping around the range). An
    /// instance that already holds a lease gets the same port back, so a
    /// retried start after a crash does not leak one.
    ///
    /// Takes `&mut self` so one allocation runs at a time per allocator; the
    /// store's unique port column settles races between allocators.
    pub fn allocate(&mut self, store: &Store, instance_id: &str) -> Result<u16, PortError> {
        if let Some(port) = store.port_of(instance_id)? {
            return Ok(port);
        }
        let leased: std::collections::HashSet<u16> =
            store.port_allocations()?.iter().map(|l| l.port).collect();
        let (start, end) = (*self.range.start(), *self.range.end());
        let mut busy = 0;
        for port in self.candidates(store.port_cursor()?) {
            if leased.contains(&port) {
                continue;
            }
            if !is_free(port) {
                busy += 1;
                continue;
            }
            if self.claims.as_ref().is_some_and(|c| !c.claim(port)) {
                busy += 1;
                continue;
            }
            if store.lease_port(instance_id, port)? {
                return Ok(port);
            }
            if let Some(claims) = &self.claims {
                claims.release(port);
            }
            // Leased meanwhile by another allocator on the same store; or
            // this instance got a lease meanwhile, which we then return.
            if let Some(port) = store.port_of(instance_id)? {
                return Ok(port);
            }
        }
        Err(PortError::Exhausted {
            start,
            end,
            leased: leased.iter().filter(|p| self.range.contains(p)).count(),
            busy,
        })
    }

    /// Leases `port` to `instance_id` if it is in the range, free and
    /// leased to no one (a stop-first replacement takes the port of the
    /// instance it replaced, so what depends on it keeps its address);
    /// else any port, as [`allocate`](Self::allocate).
    pub fn allocate_preferring(
        &mut self,
        store: &Store,
        instance_id: &str,
        port: u16,
    ) -> Result<u16, PortError> {
        if store.port_of(instance_id)?.is_none()
            && self.range.contains(&port)
            && !store.port_allocations()?.iter().any(|l| l.port == port)
            && is_free(port)
            && self.claims.as_ref().is_none_or(|c| c.claim(port))
        {
            if store.lease_port(instance_id, port)? {
                return Ok(port);
            }
            if let Some(claims) = &self.claims {
                claims.release(port);
            }
        }
        self.allocate(store, instance_id)
    }

    /// Gives back the port leased to `instance_id`, if any.
    pub fn release(&self, store: &Store, instance_id: &str) -> Result<Option<u16>, PortError> {
        let port = store.release_port(instance_id)?;
        if let (Some(port), Some(claims)) = (port, &self.claims) {
            claims.release(port);
        }
        Ok(port)
    }

    /// Every lease, by port.
    #[cfg(test)]
    pub fn allocated(&self, store: &Store) -> Result<Vec<crate::store::PortLease>, PortError> {
        Ok(store.port_allocations()?)
    }

    /// The range's ports, starting after `last` and wrapping around, each once.
    fn candidates(&self, last: Option<u16>) -> impl Iterator<Item = u16> + use<> {
        let (start, end) = (*self.range.start().max(&1), *self.range.end());
        let first = match last {
            Some(last) if (start..end).contains(&last) => last + 1,
            // After the last port of the range, the first.
            Some(_) => start,
            // A new agent starts anywhere in the range, so agents started
            // together do not all try the same ports first.
            None if start < end => {
                use rand::RngExt;
                rand::rng().random_range(start..=end)
            }
            _ => start,
        };
        (first..=end).chain(start..first)
    }
}

/// Makes `dir` (whose parent must exist) if it is missing, with mode 0700,
/// and checks it is a directory (not a symlink) owned by `uid` that no one
/// else may write to.
fn private_dir(dir: &std::path::Path, uid: rustix::process::Uid) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create it: {e}")),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("cannot read it: {e}"))?;
    if !meta.file_type().is_dir() {
        return Err("it is not a directory".to_owned());
    }
    if meta.uid() != uid.as_raw() {
        return Err(format!("it belongs to uid {}", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "others may write to it (mode {:o})",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Whether nothing listens on `port`: we can bind it on the IPv4 loopback and
/// wildcard addresses, and on the IPv6 ones where the host has IPv6. A
/// listener on any address of the port makes the wildcard bind fail.
fn is_free(port: u16) -> bool {
    let v4 = [Ipv4Addr::LOCALHOST, Ipv4Addr::UNSPECIFIED]
        .into_iter()
        .all(|ip| TcpListener::bind(SocketAddr::from((ip, port))).is_ok());
    v4 && [Ipv6Addr::LOCALHOST, Ipv6Addr::UNSPECIFIED]
        .into_iter()
        .all(|ip| match TcpListener::bind(SocketAddr::from((ip, port))) {
            Ok(_) => true,
            // No IPv6 on this host: nothing can listen there either.
            Err(e) => e.kind() != std::io::ErrorKind::AddrInUse,
        })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// A port that something is listening on, for as long as the listener lives.
    fn listening() -> (TcpListener, u16) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        (listener, port)
    }

    /// A small range whose ports are free right now, well away from the
    /// ephemeral range where other tests' listeners land.
    fn free_range(len: u16) -> RangeInclusive<u16> {
        let mut start = 31_000;
        while start < 32_000 {
            if (start..start + len).all(is_free) {
                return start..=start + len - 1;
            }
            start += len;
        }
        panic!("no {len} free ports between 31000 and 32000");
    }

    #[test]
    fn never_returns_a_port_someone_is_listening_on() {
        let store = Store::open_in_memory().expect("store");
        let (_held, port) = listening();
        let mut only_that = PortAllocator::new(port..=port);
        let err = only_that.allocate(&store, "i-1").expect_err("busy");
        assert!(matches!(err, PortError::Exhausted { busy: 1, .. }), "{err}");

        let (_first, a) = listening();
        let (_second, b) = listening();
        let (low, high) = (a.min(b), a.max(b));
        let mut around = PortAllocator::new(low..=high);
        for n in 0..3 {
            match around.allocate(&store, &format!("j-{n}")) {
                Ok(got) => assert!(got != a && got != b, "{got} is being listened on"),
                Err(PortError::Exhausted { .. }) => break,
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn agents_of_other_state_directories_never_get_the_same_port() {
        let dir = tempfile::tempdir().expect("tempdir");
        let range = free_range(2);
        let (one, two) = (
            Store::open_in_memory().expect("store"),
            Store::open_in_memory().expect("store"),
        );
        let mut first = PortAllocator::new(range.clone()).with_claims(HostClaims::new(
            dir.path().to_owned(),
            Path::new("/state/one"),
        ));
        let mut second = PortAllocator::new(range.clone()).with_claims(HostClaims::new(
            dir.path().to_owned(),
            Path::new("/state/two"),
        ));
        // Nothing listens on these ports yet: only the claims keep them apart.
        let a = first.allocate(&one, "web-1").expect("first");
        let b = second.allocate(&two, "web-1").expect("second");
        assert_ne!(a, b);
        assert!(matches!(
            second.allocate(&two, "web-2"),
            Err(PortError::Exhausted { .. })
        ));
        first.release(&one, "web-1").expect("release");
        assert_eq!(second.allocate(&two, "web-2").expect("freed"), a);
    }

    #[test]
    fn a_claims_directory_another_user_owns_or_may_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let uid = rustix::process::geteuid();
        let dir = tempfile::tempdir().expect("tempdir");
        let mine = dir.path().join("mine");
        private_dir(&mine, uid).expect("made private");
        let mode = std::fs::metadata(&mine).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);

        let open = dir.path().join("open");
        std::fs::create_dir(&open).expect("mkdir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        assert!(
            private_dir(&open, uid).is_err(),
            "a world-writable directory"
        );

        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&mine, &link).expect("symlink");
        assert!(private_dir(&link, uid).is_err(), "a symlink");

        if uid.is_root() {
            let theirs = dir.path().join("theirs");
            std::fs::create_dir(&theirs).expect("mkdir");
            std::os::unix::fs::chown(&theirs, Some(65_534), Some(65_534)).expect("chown");
            let err = private_dir(&theirs, uid).expect_err("another user's");
            assert!(err.contains("65534"), "{err}");
        }
    }

    #[test]
    fn never_returns_a_leased_port_and_moves_on_round_robin() {
        let store = Store::open_in_memory().expect("store");
        let range = free_range(3);
        let (start, end) = (*range.start(), *range.end());
        let next = |p: u16| if p == end { start } else { p + 1 };
        let mut ports = PortAllocator::new(range.clone());
        let a = ports.allocate(&store, "a").expect("a");
        assert!(
            range.contains(&a),
            "a new agent starts anywhere in its range"
        );
        let b = ports.allocate(&store, "b").expect("b");
        assert_eq!(b, next(a));
        assert_eq!(
            ports.allocate(&store, "a").expect("again"),
            a,
            "same instance, same port"
        );

        assert_eq!(ports.release(&store, "a").expect("release"), Some(a));
        let c = ports.allocate(&store, "c").expect("c");
        assert_eq!(c, next(b), "a port just given back is not reused at once");
        let d = ports.allocate(&store, "d").expect("d");
        assert_eq!(d, a, "the search wraps around");
        let leases: Vec<_> = ports
            .allocated(&store)
            .expect("allocated")
            .into_iter()
            .map(|l| (l.port, l.instance_id))
            .collect();
        let mut expected = vec![
            (a, "d".to_owned()),
            (b, "b".to_owned()),
            (c, "c".to_owned()),
        ];
        expected.sort();
        assert_eq!(leases, expected, "leases are listed by port");
    }

    #[test]
    fn exhaustion_is_an_error_naming_the_range() {
        let store = Store::open_in_memory().expect("store");
        let range = free_range(2);
        let (start, end) = (*range.start(), *range.end());
        let mut ports = PortAllocator::new(range);
        ports.allocate(&store, "a").expect("a");
        ports.allocate(&store, "b").expect("b");
        let err = ports.allocate(&store, "c").expect_err("exhausted");
        assert_eq!(err.code(), "ports.exhausted");
        let message = err.to_string();
        assert!(message.contains(&format!("{start}..={end}")), "{message}");
        assert!(message.contains("2 leased"), "{message}");

        #[allow(clippy::reversed_empty_ranges)]
        let mut empty = PortAllocator::new(10..=9);
        assert!(matches!(
            empty.allocate(&store, "x"),
            Err(PortError::Exhausted {
                start: 10,
                end: 9,
                ..
            })
        ));
    }

    #[test]
    fn leases_survive_an_agent_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.db");
        let range = free_range(3);
        let first = {
            let store = Store::open(&path).expect("open");
            PortAllocator::new(range.clone())
                .allocate(&store, "a")
                .expect("allocate")
        };
        let store = Store::open(&path).expect("reopen");
        let (start, end) = (*range.start(), *range.end());
        let mut ports = PortAllocator::new(range);
        assert_eq!(ports.allocate(&store, "a").expect("same instance"), first);
        let second = ports.allocate(&store, "b").expect("b");
        let after_first = if first == end { start } else { first + 1 };
        assert_eq!(second, after_first, "the round-robin cursor survives too");
    }
}
