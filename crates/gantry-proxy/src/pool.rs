//! Keep-alive HTTP/1.1 connections to upstreams, one pool per worker thread,
//! so a request and its upstream connection live on the same thread and the
//! pool's lock is never contended.
//!
//! A connection is taken before the request is built: when connecting
//! fails, the request has not left the proxy and can go to another
//! upstream. A connection goes back to the pool when its response has been
//! read to the end; one that was cut short is dropped, which closes it.
//!
//! Idle connections are descriptors no request holds: a pool keeps at most
//! its worker's share of the descriptor budget (`limits::shares`) over
//! all its upstreams, and `MAX_IDLE` per upstream. A connection handed back
//! to a full pool is closed.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

/// How often `sweep` is called; an idle connection lives through at most
/// `IDLE_SWEEPS` of them, so 60 to 90 seconds.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(30);
const IDLE_SWEEPS: u64 = 3;
/// Idle connections kept per upstream and worker, whatever the pool's own
/// cap; more are closed.
const MAX_IDLE: usize = 1024;

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connecting timed out")]
    Timeout,
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Handshake(#[from] hyper::Error),
}

impl ConnectError {
    /// Whether the proxy itself is short of something: descriptors, socket
    /// buffers or memory (`shortage::is_proxys_own`).
    /// Connecting to any upstream would have failed alike, so the failure
    /// says nothing of this one, which must stay in rotation. Anything else
    /// (refused, unreachable, too slow) is the upstream's.
    pub(crate) fn proxy_is_short(&self) -> bool {
        matches!(self, ConnectError::Io(error) if crate::shortage::is_proxys_own(error))
    }
}

struct Idle {
    sender: SendRequest<Incoming>,
    /// The sweep count when it became idle: ages it without reading a clock.
    since: u64,
}

#[derive(Default)]
struct Idles {
    by_addr: HashMap<SocketAddr, Vec<Idle>, BuildHasherDefault<AddrHasher>>,
    /// The connections in `by_addr`, all upstreams together.
    count: usize,
}

pub(crate) struct Pool {
    idle: Mutex<Idles>,
    /// Idle connections kept over all upstreams; more are closed.
    max_idle: usize,
    sweeps: AtomicU64,
    connect_timeout: Duration,
}

/// A connection to one upstream, ready for a request.
pub(crate) struct Connection {
    pub(crate) sender: SendRequest<Incoming>,
    pub(crate) addr: SocketAddr,
    /// Came from the pool: the upstream may have closed it meanwhile.
    pub(crate) reused: bool,
}

impl Pool {
    /// A pool that keeps at most `max_idle` idle connections.
    pub(crate) fn new(connect_timeout: Duration, max_idle: usize) -> Pool {
        Pool {
            idle: Mutex::new(Idles::default()),
            max_idle,
            sweeps: AtomicU64::new(0),
            connect_timeout,
        }
    }

    /// The most recently used idle connection to `addr` that is still open,
    /// or a new one.
    pub(crate) async fn checkout(&self, addr: SocketAddr) -> Result<Connection, ConnectError> {
        if let Some(sender) = self.take_idle(addr) {
            return Ok(Connection {
                sender,
                addr,
                reused: true,
            });
        }
        // Boxed: the connecting future is large and seldom needed, and it
        // would otherwise make every request's future as large.
        Box::pin(self.connect(addr)).await
    }

    fn take_idle(&self, addr: SocketAddr) -> Option<SendRequest<Incoming>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let Idles { by_addr, count } = &mut *idle;
        let list = by_addr.get_mut(&addr)?;
        while let Some(candidate) = list.pop() {
            *count -= 1;
            if candidate.sender.is_ready() {
                return Some(candidate.sender);
            }
        }
        None
    }

    /// A new connection, its I/O driven by a task on this worker.
    pub(crate) async fn connect(&self, addr: SocketAddr) -> Result<Connection, ConnectError> {
        let stream =
            tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| ConnectError::Timeout)??;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::Builder::new()
            .handshake::<_, Incoming>(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        Ok(Connection {
            sender,
            addr,
            reused: false,
        })
    }

    /// Takes back a connection whose exchange ended cleanly. One still busy
    /// (its request body still streaming) joins the pool once it is free.
    pub(crate) fn put_back(self: &Arc<Self>, connection: Connection) {
        let Connection {
            mut sender, addr, ..
        } = connection;
        if sender.is_closed() {
            return;
        }
        if sender.is_ready() {
            self.insert(addr, sender);
            return;
        }
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                pool.insert(addr, sender);
            }
        });
    }

    /// Keeps `sender` idle, or closes it (drops it) when the pool is full.
    fn insert(&self, addr: SocketAddr, sender: SendRequest<Incoming>) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.count >= self.max_idle {
            return;
        }
        let list = idle.by_addr.entry(addr).or_default();
        if list.len() < MAX_IDLE {
            list.push(Idle {
                sender,
                since: self.sweeps.load(Ordering::Relaxed),
            });
            idle.count += 1;
        }
    }

    /// Closes connections idle too long or closed by their upstream, and
    /// forgets upstreams with none left.
    pub(crate) fn sweep(&self) {
        let now = self.sweeps.fetch_add(1, Ordering::Relaxed) + 1;
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let Idles { by_addr, count } = &mut *idle;
        for list in by_addr.values_mut() {
            list.retain(|i| !i.sender.is_closed() && now - i.since < IDLE_SWEEPS);
        }
        by_addr.retain(|_, list| !list.is_empty());
        *count = by_addr.values().map(Vec::len).sum();
    }

    #[cfg(test)]
    fn idle_count(&self, addr: SocketAddr) -> usize {
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.by_addr.get(&addr).map_or(0, Vec::len)
    }
}

/// A fast hash for socket addresses: the pool's keys are few, local, and
/// chosen by the agent, so hash flooding is not a concern here.
#[derive(Default)]
pub(crate) struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(*byte)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        let addr = listener.local_addr().expect("has an address");
        drop(listener);
        let pool = Pool::new(Duration::from_secs(1), MAX_IDLE);
        assert!(matches!(
            pool.checkout(addr).await,
            Err(ConnectError::Io(_))
        ));
    }

    #[test]
    fn only_a_shortage_of_descriptors_buffers_or_memory_is_the_proxys_own() {
        use rustix::io::Errno;
        let os = |errno: Errno| {
            ConnectError::Io(std::io::Error::from_raw_os_error(errno.raw_os_error()))
        };
        for own in [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM] {
            assert!(os(own).proxy_is_short(), "{own:?}");
        }
        let out_of_memory = std::io::Error::from(std::io::ErrorKind::OutOfMemory);
        assert!(ConnectError::Io(out_of_memory).proxy_is_short());
        for upstreams in [
            Errno::CONNREFUSED,
            Errno::CONNRESET,
            Errno::HOSTUNREACH,
            Errno::NETUNREACH,
            Errno::TIMEDOUT,
            Errno::ADDRNOTAVAIL,
        ] {
            assert!(!os(upstreams).proxy_is_short(), "{upstreams:?}");
        }
        assert!(!ConnectError::Timeout.proxy_is_short());
    }

    /// Yields to the connection tasks until `condition` holds.
    async fn until(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_handed_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("has an address");
        let pool = Arc::new(Pool::new(Duration::from_secs(1), MAX_IDLE));
        let connection = pool.checkout(addr).await.expect("connects");
        assert!(!connection.reused);
        pool.put_back(connection);
        until("the connection to be idle in the pool", || {
            pool.idle_count(addr) == 1
        })
        .await;
        let (accepted, _) = listener.accept().await.expect("accepts");
        drop(accepted);
        let closed = || {
            let idle = pool.idle.lock().expect("locks");
            idle.by_addr
                .get(&addr)
                .is_none_or(|l| l.iter().all(|i| i.sender.is_closed()))
        };
        until("the close to be seen", closed).await;
        assert!(pool.take_idle(addr).is_none());
        pool.sweep();
        assert_eq!(pool.idle_count(addr), 0);
    }

    #[tokio::test]
    async fn a_connection_handed_back_to_a_full_pool_is_closed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("has an address");
        let pool = Arc::new(Pool::new(Duration::from_secs(1), 2));
        let (mut connections, mut upstream_ends) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            connections.push(pool.checkout(addr).await.expect("connects"));
            upstream_ends.push(listener.accept().await.expect("accepts").0);
        }
        for connection in connections {
            pool.put_back(connection);
        }
        // The upstream sees one of the three closed: the one the full pool
        // did not keep.
        let closed = |end: &tokio::net::TcpStream| matches!(end.try_read(&mut [0u8; 1]), Ok(0));
        until("a connection to be closed", || {
            upstream_ends.iter().filter(|end| closed(end)).count() == 1
        })
        .await;
        until("two connections to be idle", || pool.idle_count(addr) == 2).await;
        assert!(pool.take_idle(addr).is_some());
        assert!(pool.take_idle(addr).is_some());
        assert!(pool.take_idle(addr).is_none());
    }
}
