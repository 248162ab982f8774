//! One upstream address as the proxy knows it across route tables: how many
//! requests and WebSockets are open to it, whether it is ejected after
//! refusing a connection, whether a drain took it out of service, and the
//! wake-up a drain waits for. The state is shared by address, so a table
//! swap keeps counting what the old table sent.
//!
//! Must never: let a request reach an upstream after a drain of it returned
//! (the agent stops the instance then).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// How long an upstream that refused a connection is passed over.
pub(crate) const EJECT_FOR: Duration = Duration::from_secs(5);

pub(crate) struct Upstream {
    pub(crate) addr: SocketAddr,
    in_flight: AtomicUsize,
    /// Milliseconds on `now_ms`'s clock until which it is skipped; 0: never ejected.
    ejected_until: AtomicU64,
    /// Drains waiting on this upstream; requests only wake `idle` when one is.
    drains: AtomicUsize,
    /// A drain took it out of service: a request that chose it from a table
    /// read before then goes elsewhere (`InFlight::unless_retired`).
    retired: AtomicBool,
    idle: Notify,
}

impl Upstream {
    fn new(addr: SocketAddr) -> Upstream {
        Upstream {
            addr,
            in_flight: AtomicUsize::new(0),
            ejected_until: AtomicU64::new(0),
            drains: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
            idle: Notify::new(),
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    pub(crate) fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }

    pub(crate) fn ejected_until(&self) -> u64 {
        self.ejected_until.load(Ordering::Relaxed)
    }

    /// Passes over this upstream for `EJECT_FOR`.
    pub(crate) fn eject(&self) {
        let until = now_ms().saturating_add(millis(EJECT_FOR));
        self.ejected_until.fetch_max(until, Ordering::Relaxed);
    }

    /// Back in service: a new table routes to this address again (its port
    /// may now be a new instance's).
    pub(crate) fn reinstate(&self) {
        if self.retired.load(Ordering::Relaxed) {
            self.retired.store(false, Ordering::SeqCst);
        }
    }

    /// An upstream that answered is healthy again at once.
    pub(crate) fn mark_alive(&self) {
        if self.ejected_until.load(Ordering::Relaxed) != 0 {
            self.ejected_until.store(0, Ordering::Relaxed);
        }
    }
}

/// Milliseconds since the proxy's clock started: cheap to compare and store.
pub(crate) fn now_ms() -> u64 {
    static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
    // Starts at 1 so that 0 can mean "never ejected".
    millis(EPOCH.elapsed()).saturating_add(1)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One request (or WebSocket) open to an upstream, for as long as it lives.
pub(crate) struct InFlight(Arc<Upstream>);

impl InFlight {
    pub(crate) fn new(upstream: Arc<Upstream>) -> InFlight {
        upstream.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(upstream)
    }

    /// Counts a request in flight to `upstream`, unless a drain has taken
    /// it out of service: `None` then, and the request must be routed again
    /// on the current table. A request picks its upstream from the table it
    /// read when it arrived, and a swap and a drain can come in between.
    ///
    /// A drain stores `retired`, then reads `in_flight`; this adds to
    /// `in_flight`, then reads `retired`; all four SeqCst. In their single
    /// total order either the drain's read comes after this add (the drain
    /// sees the request and waits for it to end) or before it, and then the
    /// drain's store comes before this read (the request sees the flag).
    /// Both cannot miss. With Release/Acquire they could: each read may see
    /// the value from before the other side's write.
    pub(crate) fn unless_retired(upstream: Arc<Upstream>) -> Option<InFlight> {
        let counted = InFlight::new(upstream);
        if counted.0.retired.load(Ordering::SeqCst) {
            // Dropping it un-counts it and wakes a drain waiting on it.
            return None;
        }
        Some(counted)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let before = self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        // SeqCst on both sides: either a drain sees the count at 0, or this
        // sees the drain and wakes it.
        if before == 1 && self.0.drains.load(Ordering::SeqCst) > 0 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Every upstream some route or open request still refers to, by address.
#[derive(Default)]
pub(crate) struct Upstreams {
    known: Mutex<HashMap<SocketAddr, Weak<Upstream>>>,
}

impl Upstreams {
    /// The state of `addr`, shared with every route and request that uses it.
    pub(crate) fn get(&self, addr: SocketAddr) -> Arc<Upstream> {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(upstream) = known.get(&addr).and_then(Weak::upgrade) {
            return upstream;
        }
        let upstream = Arc::new(Upstream::new(addr));
        known.insert(addr, Arc::downgrade(&upstream));
        upstream
    }

    fn find(&self, addr: SocketAddr) -> Option<Arc<Upstream>> {
        let known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        known.get(&addr).and_then(Weak::upgrade)
    }

    /// Takes `addrs` out of service before a drain: see `InFlight::unless_retired`.
    /// An address nothing refers to has no request that could choose it.
    pub(crate) fn retire(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        for upstream in addrs.into_iter().filter_map(|a| self.find(a)) {
            upstream.retired.store(true, Ordering::SeqCst);
        }
    }

    /// Forgets upstreams nothing refers to any more.
    pub(crate) fn prune(&self) {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        known.retain(|_, upstream| upstream.strong_count() > 0);
    }

    /// Requests and WebSockets open to `addr` now.
    #[cfg(test)]
    fn open(&self, addr: SocketAddr) -> usize {
        self.find(addr).map_or(0, |u| u.in_flight())
    }

    /// Waits until nothing is open to any of `addrs`, or `timeout` passes.
    /// Returns how many requests and WebSockets were still open. Only for
    /// addresses retired first does its return mean no request will follow.
    pub(crate) async fn drain(&self, addrs: &[SocketAddr], timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        let watched: Vec<Watch> = addrs
            .iter()
            .filter_map(|a| self.find(*a))
            .map(Watch::new)
            .collect();
        for watch in &watched {
            let upstream = &watch.0;
            loop {
                // Created before the count is read, so a request that ends
                // in between still wakes it.
                let idle = upstream.idle.notified();
                if upstream.in_flight() == 0 {
                    break;
                }
                if tokio::time::timeout_at(deadline, idle).await.is_err() {
                    break;
                }
            }
        }
        watched.iter().map(|w| w.0.in_flight()).sum()
    }
}

/// Marks an upstream as drained for as long as a drain waits on it.
struct Watch(Arc<Upstream>);

impl Watch {
    fn new(upstream: Arc<Upstream>) -> Watch {
        upstream.drains.fetch_add(1, Ordering::SeqCst);
        Watch(upstream)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.0.drains.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn the_same_address_shares_one_state() {
        let upstreams = Upstreams::default();
        let a = upstreams.get(addr(1));
        let _open = InFlight::new(Arc::clone(&a));
        assert_eq!(upstreams.get(addr(1)).in_flight(), 1);
        assert_eq!(upstreams.open(addr(1)), 1);
        assert_eq!(upstreams.open(addr(2)), 0);
    }

    #[test]
    fn an_upstream_nothing_uses_is_forgotten() {
        let upstreams = Upstreams::default();
        drop(upstreams.get(addr(1)));
        upstreams.prune();
        assert!(upstreams.find(addr(1)).is_none());
    }

    #[test]
    fn an_ejected_upstream_is_back_after_the_period_or_when_it_answers() {
        let upstreams = Upstreams::default();
        let a = upstreams.get(addr(1));
        a.eject();
        assert!(a.is_ejected(now_ms()));
        assert!(!a.is_ejected(now_ms() + millis(EJECT_FOR) + 1));
        a.mark_alive();
        assert!(!a.is_ejected(now_ms()));
    }

    #[tokio::test]
    async fn drain_returns_when_the_last_request_ends() {
        let upstreams = Arc::new(Upstreams::default());
        let open = InFlight::new(upstreams.get(addr(1)));
        let ender = tokio::spawn(async move {
            tokio::task::yield_now().await;
            drop(open);
        });
        let left = upstreams
            .drain(&[addr(1), addr(2)], Duration::from_secs(10))
            .await;
        assert_eq!(left, 0);
        ender.await.expect("joins");
    }

    #[tokio::test]
    async fn a_retired_upstream_takes_no_new_request_and_waits_for_those_counted_before() {
        let upstreams = Upstreams::default();
        let a = upstreams.get(addr(1));
        let before = InFlight::unless_retired(Arc::clone(&a)).expect("in service");
        upstreams.retire([addr(1), addr(2)]);
        assert!(InFlight::unless_retired(Arc::clone(&a)).is_none());
        assert_eq!(a.in_flight(), 1, "the refused request is not counted");
        assert_eq!(upstreams.drain(&[addr(1)], Duration::ZERO).await, 1);
        drop(before);
        assert_eq!(upstreams.drain(&[addr(1)], Duration::ZERO).await, 0);
        a.reinstate();
        assert!(InFlight::unless_retired(a).is_some());
    }

    #[tokio::test]
    async fn drain_gives_up_at_the_timeout_and_says_what_is_open() {
        let upstreams = Upstreams::default();
        let _open = InFlight::new(upstreams.get(addr(1)));
        let left = upstreams.drain(&[addr(1)], Duration::from_millis(20)).await;
        assert_eq!(left, 1);
    }
}
