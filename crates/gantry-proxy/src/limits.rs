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
//! (or an open file) for ever. An HTTP/2 stream the client stopped taking
//! is reset alone while another request of its connection goes on; a
//! connection on which every open response has stalled is closed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::stream_reset::StreamReset;

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
    /// keep-alive and HTTP/2 alike; an HTTP/2 client gets GOAWAY). A
    /// response the client has taken nothing of for this long (HTTP/1:
    /// does not read; HTTP/2: gives its stream no window) is let go: on
    /// HTTP/2 its stream alone is reset (RST_STREAM) while another request
    /// of the connection goes on; a connection whose every open response
    /// has stalled (an HTTP/1 one, an HTTP/2 one with nothing else open) is
    /// closed at once.
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
    /// `connections` (at least 1) when the budget lowered them.
    pub(crate) per_client: usize,
    /// Idle upstream connections one worker's pool keeps.
    pub(crate) idle_per_worker: usize,
    /// The file-descriptor soft limit they were shared under (`None`: no
    /// limit), for the log that says they were lowered.
    pub(crate) open_files: Option<u64>,
}

/// The caps in force for `clients` under the file-descriptor soft limit,
/// shared by `workers` worker threads.
pub(crate) fn shares(clients: &ClientLimits, workers: usize) -> Shares {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    shares_under(soft, clients, workers)
}

/// The caps in force under `soft` descriptors (`None`: no limit).
///
/// When the budget lowers the connections cap, the per-client cap becomes
/// at most half of it: under a low limit the budget admits fewer
/// connections than the per-client cap (49 under 1024, against 256), and
/// one client would take them all. Caps the budget leaves alone stay as
/// configured (one load balancer may be meant to hold them all).
fn shares_under(soft: Option<u64>, clients: &ClientLimits, workers: usize) -> Shares {
    let workers = workers.max(1);
    let streams = clients.streams();
    let budget = idle_for_each(budget(soft, streams), streams, workers);
    let connections = clients.max_connections.min(budget.connections).max(1);
    let per_client = if connections < clients.max_connections {
        clients.max_per_client.min(connections / 2).max(1)
    } else {
        clients.max_per_client
    };
    Shares {
        connections,
        per_client,
        idle_per_worker: budget.idle_upstream / workers,
        open_files: soft,
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
    /// Each open request, shared with its `OpenRequest`.
    open: Mutex<Vec<Arc<Open>>>,
    /// Milliseconds after `since` at which the connection last went idle.
    idle_from: AtomicU64,
}

/// One open request as its connection's `Activity` sees it.
struct Open {
    /// Milliseconds after the connection's start since which the response
    /// has waited on the client, or `NOT_WAITING`.
    waiting: AtomicU64,
    /// Ends its HTTP/2 stream alone; never set on HTTP/1, where a request
    /// is all its connection has open.
    reset: OnceLock<StreamReset>,
    /// Reset, and on its way out: it no longer counts, stalled or not.
    resetting: AtomicBool,
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
    /// A response has waited the idle time for the client to take a frame,
    /// and nothing else open on the connection goes on (or the response
    /// cannot be reset alone): close at once, a graceful close would wait
    /// for it too.
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
        let open = Arc::new(Open {
            waiting: AtomicU64::new(NOT_WAITING),
            reset: OnceLock::new(),
            resetting: AtomicBool::new(false),
        });
        self.lock().push(Arc::clone(&open));
        OpenRequest {
            activity: Arc::clone(self),
            open,
        }
    }

    /// Whether the connection has been idle, or a response has waited on
    /// the client, for `idle` at `now`; if not, when to look again.
    ///
    /// Responses that have waited that long are reset here, each stream
    /// alone, when they can be (HTTP/2) and another request open on the
    /// connection has not (it waits on its upstream, or on the client for
    /// less): the client stopped taking those, not the connection. When
    /// every open request has, nothing on the connection moves: `Stalled`.
    pub(crate) fn check(&self, idle: Duration, now: Instant) -> Check {
        let open = self.lock();
        if open.is_empty() {
            let at = self.deadline(self.idle_from.load(Ordering::SeqCst), idle);
            return if at <= now {
                Check::Idle
            } else {
                Check::Until(at)
            };
        }
        let mut next = now + idle;
        let mut going = false;
        let mut stalled = Vec::new();
        for request in open.iter().filter(|r| !r.resetting.load(Ordering::SeqCst)) {
            let from = request.waiting.load(Ordering::SeqCst);
            let at = (from != NOT_WAITING).then(|| self.deadline(from, idle));
            match at {
                Some(at) if at <= now => stalled.push(request),
                Some(at) => {
                    going = true;
                    next = next.min(at);
                }
                None => going = true,
            }
        }
        if stalled.is_empty() {
            return Check::Until(next);
        }
        if !going || stalled.iter().any(|r| r.reset.get().is_none()) {
            return Check::Stalled;
        }
        for request in stalled {
            request.resetting.store(true, Ordering::SeqCst);
            if let Some(reset) = request.reset.get() {
                reset.reset();
            }
        }
        Check::Until(next)
    }

    /// When something that began `from` milliseconds after the connection
    /// has lasted `idle`.
    fn deadline(&self, from: u64, idle: Duration) -> Instant {
        self.since + Duration::from_millis(from) + idle
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Open>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.since.elapsed().as_millis()).unwrap_or(NOT_WAITING - 1)
    }
}

/// One request open on a connection (see `Activity::request`).
pub(crate) struct OpenRequest {
    activity: Arc<Activity>,
    open: Arc<Open>,
}

impl OpenRequest {
    /// How its HTTP/2 stream is reset alone, should its response stall
    /// while the connection has other requests going.
    pub(crate) fn resettable(&self, reset: StreamReset) {
        let _ = self.open.reset.set(reset);
    }

    /// Starts the clock when the response has something the client has not
    /// taken (the response is handed over, or hyper took a frame of its
    /// body); stops it when hyper came back for more and there was none yet.
    pub(crate) fn waiting_on_client(&self, waiting: bool) {
        let since = if waiting {
            self.activity.millis()
        } else {
            NOT_WAITING
        };
        self.open.waiting.store(since, Ordering::SeqCst);
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        let mut open = self.activity.lock();
        open.retain(|r| !Arc::ptr_eq(r, &self.open));
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
        // Caps the budget does not lower are the operator's.
        let one_balancer = ClientLimits {
            max_connections: 2,
            ..ClientLimits::default()
        };
        assert_eq!(shares_under(None, &one_balancer, 2).per_client, 256);
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

    /// A request open on an HTTP/2 connection, as `worker::answering`
    /// opens it: with its stream's reset.
    fn stream(activity: &Arc<Activity>) -> (OpenRequest, StreamReset) {
        let open = activity.request();
        let reset = StreamReset::default();
        open.resettable(reset.clone());
        (open, reset)
    }

    #[test]
    fn a_stalled_stream_is_reset_alone_while_another_request_goes_on() {
        let activity = Activity::new();
        let (paused, reset) = stream(&activity);
        paused.waiting_on_client(true);
        let (_upstream_slow, other) = stream(&activity);
        let later = Instant::now() + 2 * IDLE;
        assert_eq!(activity.check(IDLE, later), Check::Until(later + IDLE));
        assert!(reset.is_reset());
        assert!(!other.is_reset());
        // Reset, it is on its way out and not found again.
        assert_eq!(activity.check(IDLE, later), Check::Until(later + IDLE));
        drop(paused);
        assert_eq!(activity.check(IDLE, later), Check::Until(later + IDLE));
    }

    #[test]
    fn a_stream_that_has_waited_less_on_the_client_still_goes_on() {
        let activity = Activity::new();
        let (paused, reset) = stream(&activity);
        paused.waiting_on_client(true);
        let (reading, other) = stream(&activity);
        // Its last frame was handed over half an idle time later.
        let paused_from = paused.open.waiting.load(Ordering::SeqCst);
        let reading_from = paused_from + 500;
        reading.open.waiting.store(reading_from, Ordering::SeqCst);
        let first_stalls = activity.deadline(paused_from, IDLE);
        let second_stalls = activity.deadline(reading_from, IDLE);
        assert_eq!(
            activity.check(IDLE, first_stalls),
            Check::Until(second_stalls)
        );
        assert!(reset.is_reset());
        assert!(!other.is_reset());
        // Once it stalls in its turn, nothing is left going.
        assert_eq!(activity.check(IDLE, second_stalls), Check::Stalled);
    }

    #[test]
    fn a_connection_whose_every_open_stream_has_stalled_is_stalled_whole() {
        let activity = Activity::new();
        let (first, one) = stream(&activity);
        let (second, two) = stream(&activity);
        first.waiting_on_client(true);
        second.waiting_on_client(true);
        let later = Instant::now() + 2 * IDLE;
        assert_eq!(activity.check(IDLE, later), Check::Stalled);
        assert!(!one.is_reset() && !two.is_reset(), "dropped with it");
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
