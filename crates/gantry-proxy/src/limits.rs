//! What a client may hold of the proxy: how long it may take to say
//! something, how long a connection may sit idle, and how many connections
//! it (and everyone together) may have open. Without these a few hundred
//! silent sockets take every file descriptor and no request is answered.
//!
//! `ConnectionCaps` is asked by the acceptors before a connection reaches a
//! worker; a connection over a cap is closed at once. `Activity` tells a
//! connection's task when it has had no request open for the idle timeout,
//! or when a response has waited that long for the client to take a frame
//! of it: a client that stops reading must not hold an upstream connection
//! (or an open file) for ever.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Deadlines and caps for client connections (`gantry proxy
/// --client-timeout`, `--idle-timeout`, `--max-connections`,
/// `--max-connections-per-client`; `ping` and `max_streams` have no flag).
#[derive(Clone, Copy, Debug)]
pub struct ClientLimits {
    /// From accept to the end of the TLS handshake.
    pub handshake: Duration,
    /// From accept (or the end of the TLS handshake) to the bytes that say
    /// which protocol the client speaks: the whole HTTP/2 preface, or the
    /// first byte of an HTTP/1 request.
    pub first_bytes: Duration,
    /// For the whole header block of an HTTP/1 request.
    pub headers: Duration,
    /// A connection with no request open is closed after this (HTTP/1
    /// keep-alive and HTTP/2 alike; an HTTP/2 client gets GOAWAY). So is a
    /// connection one of whose responses the client has taken nothing of
    /// for this long (HTTP/1: does not read; HTTP/2: gives no window), at
    /// once: its other HTTP/2 streams end with it.
    pub idle: Duration,
    /// HTTP/2 pings go out after this long without a frame; a ping not
    /// answered within it closes the connection.
    pub ping: Duration,
    /// Client connections open at once, over both listeners. Lowered at
    /// start to what the file-descriptor limit allows (`shares`).
    pub max_connections: usize,
    /// Connections open at once from one client address. Lowered at start
    /// to half the connections cap in force (at least 1) when it is more,
    /// so one client never holds the whole proxy (`shares`).
    pub max_per_client: usize,
    /// Requests open at once on one HTTP/2 connection (advertised as
    /// SETTINGS_MAX_CONCURRENT_STREAMS; a stream over it is refused with
    /// REFUSED_STREAM, which a client may retry). Each may hold an upstream
    /// connection or a file, so this is also what one connection may cost
    /// in file descriptors besides its own. At least 1.
    pub max_streams: u32,
}

impl Default for ClientLimits {
    fn default() -> ClientLimits {
        ClientLimits {
            handshake: Duration::from_secs(10),
            first_bytes: Duration::from_secs(10),
            headers: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            ping: Duration::from_secs(20),
            max_connections: 16_384,
            max_per_client: 256,
            max_streams: 16,
        }
    }
}

impl ClientLimits {
    /// `max_streams`, of which 0 would refuse every HTTP/2 request.
    pub(crate) fn streams(&self) -> u32 {
        self.max_streams.max(1)
    }
}

/// Descriptors kept for everything that is not a client connection or an
/// idle upstream connection: the listeners, sockets, the log, certificate
/// files.
const RESERVED_FDS: u64 = 64;

/// The idle upstream connections' share of the descriptors left after
/// `RESERVED_FDS`: one in this many.
const IDLE_SHARE: u64 = 8;

/// How the file-descriptor soft limit is shared out (`budget`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FdBudget {
    /// Client connections open at once, each with all its streams.
    pub(crate) connections: usize,
    /// Idle upstream connections kept by all the workers' pools together.
    pub(crate) idle_upstream: usize,
}

/// The caps in force: `ClientLimits` lowered to what the file-descriptor
/// budget allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shares {
    /// Client connections open at once, over both listeners (at least 1).
    pub(crate) connections: usize,
    /// Client connections open at once from one address: at most half of
    /// `connections`, at least 1.
    pub(crate) per_client: usize,
    /// Idle upstream connections one worker's pool keeps.
    pub(crate) idle_per_worker: usize,
}

/// The caps in force for `clients` under the file-descriptor soft limit,
/// shared by `workers` worker threads.
pub(crate) fn shares(clients: &ClientLimits, workers: usize) -> Shares {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    shares_under(soft, clients, workers)
}

/// The caps in force under `soft` descriptors (`None`: no limit).
///
/// The per-client cap is at most half of the connections cap: under a low
/// limit the budget admits fewer connections than the per-client cap
/// (49 under 1024, against 256), and one client would take them all.
fn shares_under(soft: Option<u64>, clients: &ClientLimits, workers: usize) -> Shares {
    let workers = workers.max(1);
    let streams = clients.streams();
    let budget = idle_for_each(budget(soft, streams), streams, workers);
    let connections = clients.max_connections.min(budget.connections).max(1);
    Shares {
        connections,
        per_client: clients.max_per_client.min(connections / 2).max(1),
        idle_per_worker: budget.idle_upstream / workers,
    }
}

/// `budget` with room for at least one idle upstream connection in each of
/// the `workers` pools, taken from the client connections' share when the
/// idle share alone leaves some pool none (many cores, a low limit): a
/// pool that keeps nothing opens a new upstream connection for every
/// request, and the closed ones' ports wait in TIME_WAIT. The connections'
/// share gives up whole connections, at the `streams` price each, and
/// never its last one: then `budget` is left as it is.
fn idle_for_each(budget: FdBudget, streams: u32, workers: usize) -> FdBudget {
    let missing = workers.saturating_sub(budget.idle_upstream);
    if missing == 0 {
        return budget;
    }
    let price = 1 + usize::try_from(streams.max(1)).unwrap_or(usize::MAX - 1);
    let given_up = missing.div_ceil(price);
    if given_up >= budget.connections {
        return budget;
    }
    FdBudget {
        connections: budget.connections - given_up,
        idle_upstream: workers,
    }
}

/// How `soft` descriptors (`None`: no limit) are shared out.
///
/// A client connection costs its own descriptor and one for each request it
/// has open, which may hold an upstream connection (a WebSocket's too) or a
/// static file: one at a time on HTTP/1, up to `streams` on HTTP/2. Every
/// connection is counted at the HTTP/2 price, so the cap holds whatever the
/// clients speak. Counting descriptors as requests take them would admit
/// more HTTP/1 clients, but a request would then need somewhere to wait, or
/// an error, when none is left; the price of this is paid only where the
/// limit is low.
///
/// An upstream connection idle in a pool is held by no request, so the
/// pools get a share of their own, taken first:
///
/// ```text
/// idle        = (soft − RESERVED_FDS) / IDLE_SHARE
/// connections = (soft − RESERVED_FDS − idle) / (1 + streams)
/// ```
///
/// so `connections × (1 + streams) + idle + RESERVED_FDS ≤ soft`. Each of
/// the `W` workers has its own pool, which keeps at most `idle / W` (a
/// connection handed back to a full pool is closed; `idle_for_each` makes
/// that at least 1 where it can). Under a soft limit of 1024 and 16
/// streams that is 120 idle and 49 connections. `run` raises
/// the soft limit to the hard one: under systemd's 524288, 65528 idle and
/// 26982 connections, above the default cap of 16384.
fn budget(soft: Option<u64>, streams: u32) -> FdBudget {
    let Some(soft) = soft else {
        return FdBudget {
            connections: usize::MAX,
            idle_upstream: usize::MAX,
        };
    };
    let usable = soft.saturating_sub(RESERVED_FDS);
    let idle = usable / IDLE_SHARE;
    let connections = (usable - idle) / (1 + u64::from(streams.max(1)));
    FdBudget {
        connections: usize::try_from(connections).unwrap_or(usize::MAX),
        idle_upstream: usize::try_from(idle).unwrap_or(usize::MAX),
    }
}

/// Raises the file-descriptor soft limit to the hard limit (systemd and
/// shells start processes at 1024); returns the soft limit now in force.
pub(crate) fn raise_nofile() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
    getrlimit(Resource::Nofile).current
}

/// Counts open client connections, in total and per address.
pub(crate) struct ConnectionCaps {
    total: usize,
    per_client: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

impl ConnectionCaps {
    pub(crate) fn new(total: usize, per_client: usize) -> Arc<ConnectionCaps> {
        Arc::new(ConnectionCaps {
            total: total.max(1),
            per_client: per_client.max(1),
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// A permit for one more connection from `client`, or `None` when a cap
    /// is reached. The permit gives its place back when dropped.
    pub(crate) fn admit(self: &Arc<Self>, client: IpAddr) -> Option<Permit> {
        let client = client_key(client);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, by_client) = &mut *open;
        if *total >= self.total {
            return None;
        }
        let mine = by_client.entry(client).or_insert(0);
        if *mine >= self.per_client {
            return None;
        }
        *mine += 1;
        *total += 1;
        Some(Permit {
            caps: Arc::clone(self),
            client,
        })
    }
}

/// Who a per-client cap counts: an IPv4 address, or an IPv6 /64 (one
/// host usually holds a whole /64, and could otherwise use a new address
/// for each connection).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let network = u128::from(v6) & !u128::from(u64::MAX);
            IpAddr::V6(network.into())
        }
        v4 => v4,
    }
}

/// One admitted connection's place under the caps.
pub(crate) struct Permit {
    caps: Arc<ConnectionCaps>,
    client: IpAddr,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self.caps.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, by_client) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(mine) = by_client.get_mut(&self.client) {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                by_client.remove(&self.client);
            }
        }
    }
}

/// The requests open on one client connection, and when the last ended.
pub(crate) struct Activity {
    since: Instant,
    /// Each open request's `OpenRequest::waiting`.
    open: Mutex<Vec<Arc<AtomicU64>>>,
    /// Milliseconds after `since` at which the connection last went idle.
    idle_from: AtomicU64,
}

/// An open request's `waiting` while its response does not wait on the
/// client (for its upstream or its file, or not begun).
const NOT_WAITING: u64 = u64::MAX;

/// What a connection's idle timer finds (`Activity::check`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Check {
    /// Nothing to do before then.
    Until(Instant),
    /// No request open for the idle time: close gracefully.
    Idle,
    /// A response has waited the idle time for the client to take a frame:
    /// close at once, a graceful close would wait for it too.
    Stalled,
}

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            since: Instant::now(),
            open: Mutex::new(Vec::new()),
            idle_from: AtomicU64::new(0),
        })
    }

    /// Marks a request open until the guard is dropped (with its response).
    pub(crate) fn request(self: &Arc<Self>) -> OpenRequest {
        let waiting = Arc::new(AtomicU64::new(NOT_WAITING));
        self.lock().push(Arc::clone(&waiting));
        OpenRequest {
            activity: Arc::clone(self),
            waiting,
        }
    }

    /// Whether the connection has been idle, or a response has waited on
    /// the client, for `idle` at `now`; if not, when to look again.
    pub(crate) fn check(&self, idle: Duration, now: Instant) -> Check {
        let open = self.lock();
        let (from, ending) = if open.is_empty() {
            (self.idle_from.load(Ordering::SeqCst), Check::Idle)
        } else {
            let oldest = open.iter().map(|w| w.load(Ordering::SeqCst)).min();
            (oldest.unwrap_or(NOT_WAITING), Check::Stalled)
        };
        if from == NOT_WAITING {
            return Check::Until(now + idle);
        }
        let at = self.since + Duration::from_millis(from) + idle;
        if at <= now { ending } else { Check::Until(at) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<AtomicU64>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.since.elapsed().as_millis()).unwrap_or(NOT_WAITING - 1)
    }
}

/// One request open on a connection (see `Activity::request`).
pub(crate) struct OpenRequest {
    activity: Arc<Activity>,
    /// Milliseconds after the connection's start since which the response
    /// has waited on the client, or `NOT_WAITING`.
    waiting: Arc<AtomicU64>,
}

impl OpenRequest {
    /// Starts the clock when the response has something the client has not
    /// taken (the response is handed over, or hyper took a frame of its
    /// body); stops it when hyper came back for more and there was none yet.
    pub(crate) fn waiting_on_client(&self, waiting: bool) {
        let since = if waiting {
            self.activity.millis()
        } else {
            NOT_WAITING
        };
        self.waiting.store(since, Ordering::SeqCst);
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        let mut open = self.activity.lock();
        open.retain(|w| !Arc::ptr_eq(w, &self.waiting));
        self.activity
            .idle_from
            .store(self.activity.millis(), Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_per_client_and_in_total_and_free_on_drop() {
        let caps = ConnectionCaps::new(3, 2);
        let a = IpAddr::from([10, 0, 0, 1]);
        let b = IpAddr::from([10, 0, 0, 2]);
        let first = caps.admit(a).expect("first");
        let _second = caps.admit(a).expect("second");
        assert!(caps.admit(a).is_none(), "per client");
        let _third = caps.admit(b).expect("another client");
        assert!(caps.admit(b).is_none(), "in total");
        drop(first);
        assert!(caps.admit(a).is_some(), "a place given back");
    }

    #[test]
    fn every_connection_with_all_its_streams_open_and_every_idle_upstream_fit_the_limit() {
        for soft in [0, 64, 100, 1024, 4096, 524_288] {
            for streams in [0, 1, 16, 256] {
                let shared = budget(Some(soft), streams);
                let connections = u64::try_from(shared.connections).expect("fits");
                let idle = u64::try_from(shared.idle_upstream).expect("fits");
                let held = connections * (1 + u64::from(streams.max(1))) + idle;
                assert!(
                    held <= soft.saturating_sub(RESERVED_FDS),
                    "{shared:?} with {streams} streams under {soft}"
                );
            }
        }
        let under_1024 = FdBudget {
            connections: 49,
            idle_upstream: 120,
        };
        assert_eq!(budget(Some(1024), 16), under_1024);
        let under_systemd = FdBudget {
            connections: 26_982,
            idle_upstream: 65_528,
        };
        assert_eq!(budget(Some(524_288), 16), under_systemd);
        assert!(under_systemd.connections > ClientLimits::default().max_connections);
        assert_eq!(budget(None, 16).connections, usize::MAX);
    }

    #[test]
    fn one_client_gets_at_most_half_the_connections_the_budget_admits() {
        let defaults = ClientLimits::default();
        let under_1024 = shares_under(Some(1024), &defaults, 2);
        assert_eq!(under_1024.connections, 49);
        assert_eq!(under_1024.per_client, 24, "not the default 256");
        for soft in [0, 64, 100, 200, 1024, 4096, 524_288] {
            for workers in [1, 2, 64] {
                let shares = shares_under(Some(soft), &defaults, workers);
                let half = (shares.connections / 2).max(1);
                assert!(
                    (1..=half).contains(&shares.per_client),
                    "{shares:?} under {soft}"
                );
            }
        }
        let under_systemd = shares_under(Some(524_288), &defaults, 2);
        assert_eq!(under_systemd.connections, defaults.max_connections);
        assert_eq!(under_systemd.per_client, defaults.max_per_client);
        let configured = ClientLimits {
            max_connections: 10,
            max_per_client: 3,
            ..ClientLimits::default()
        };
        assert_eq!(shares_under(None, &configured, 2).per_client, 3);
        let only_two = ClientLimits {
            max_connections: 2,
            ..ClientLimits::default()
        };
        assert_eq!(shares_under(None, &only_two, 2).per_client, 1);
    }

    #[test]
    fn each_worker_keeps_an_idle_upstream_connection_when_the_budget_allows() {
        let defaults = ClientLimits::default();
        // 120 idle for 192 workers: each gets one, 5 connections pay for it.
        let many_cores = shares_under(Some(1024), &defaults, 192);
        assert_eq!(many_cores.idle_per_worker, 1);
        assert_eq!(many_cores.connections, 44);
        assert_eq!(shares_under(Some(1024), &defaults, 2).idle_per_worker, 60);
        // 4 idle and one connection: the connection stays, the pools keep none.
        let too_few = shares_under(Some(100), &defaults, 64);
        assert_eq!((too_few.connections, too_few.idle_per_worker), (1, 0));
        for soft in [100, 200, 256, 1024, 4096] {
            for streams in [1, 16, 256] {
                for workers in [1, 7, 64, 192, 1024] {
                    let clients = ClientLimits {
                        max_streams: streams,
                        ..ClientLimits::default()
                    };
                    if budget(Some(soft), streams).connections == 0 {
                        // One connection is admitted all the same.
                        continue;
                    }
                    let shares = shares_under(Some(soft), &clients, workers);
                    let (connections, idle, workers) = (
                        u64::try_from(shares.connections).expect("fits"),
                        u64::try_from(shares.idle_per_worker).expect("fits"),
                        u64::try_from(workers).expect("fits"),
                    );
                    let held = connections * (1 + u64::from(streams)) + idle * workers;
                    let usable = soft - RESERVED_FDS;
                    let context =
                        format!("{shares:?}, {streams} streams, {workers} workers, {soft}");
                    assert!(held <= usable, "{context}");
                    let room =
                        usable / 8 >= workers || usable >= workers + 2 * (1 + u64::from(streams));
                    assert!(!room || idle >= 1, "{context}");
                }
            }
        }
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let caps = ConnectionCaps::new(10, 1);
        let _one = caps
            .admit("2001:db8:1:2::1".parse().expect("ip"))
            .expect("first");
        assert!(
            caps.admit("2001:db8:1:2::ffff".parse().expect("ip"))
                .is_none()
        );
        assert!(caps.admit("2001:db8:1:3::1".parse().expect("ip")).is_some());
    }

    const IDLE: Duration = Duration::from_secs(1);

    #[test]
    fn a_connection_with_a_request_open_is_not_idle() {
        let activity = Activity::new();
        let open = activity.request();
        let later = Instant::now() + 5 * IDLE;
        assert_eq!(activity.check(IDLE, later), Check::Until(later + IDLE));
        drop(open);
        assert_eq!(activity.check(IDLE, later), Check::Idle);
    }

    #[test]
    fn a_response_the_client_takes_nothing_of_stalls_the_connection() {
        let activity = Activity::new();
        let waiting = activity.request();
        let _elsewhere = activity.request();
        waiting.waiting_on_client(true);
        let now = Instant::now();
        assert!(matches!(activity.check(IDLE, now), Check::Until(at) if at > now));
        assert_eq!(activity.check(IDLE, now + 2 * IDLE), Check::Stalled);
    }

    #[test]
    fn a_response_waiting_on_its_upstream_does_not_stall() {
        let activity = Activity::new();
        let open = activity.request();
        open.waiting_on_client(true);
        open.waiting_on_client(false);
        let later = Instant::now() + 5 * IDLE;
        assert_eq!(activity.check(IDLE, later), Check::Until(later + IDLE));
    }
}
