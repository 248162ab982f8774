//! Listener handoff: a new proxy process takes over the listening sockets of
//! the running one, so restarting the proxy (a new binary, new settings)
//! refuses no connection.
//!
//! The running proxy serves `handoff.sock` (mode 0600, and only a peer of the
//! same user is answered). A new process started with `--take-over`:
//!
//! 1. connects; the old one sends one line of JSON, `{"listeners":["http"],
//!    "pid":N}`, with every listening socket it holds attached in that order
//!    (`SCM_RIGHTS`), by name, so a listener added later ("https") travels
//!    the same way;
//! 2. starts accepting on them (both processes accept for a moment: the
//!    kernel's queue is shared, nothing is refused), binds its control and
//!    handoff sockets beside the old ones, and writes `ready`;
//! 3. the old one marks itself handed off and answers `released`; the new one
//!    renames its sockets over the old paths (an atomic swap for clients of
//!    the control API);
//! 4. the old one stops accepting, answers its open HTTP/1 connections'
//!    next requests with `Connection: close`, lets open requests and
//!    WebSockets finish for up to its shutdown timeout, and exits.

use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::net::TcpListener;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::ProxyError;

/// The most listening sockets one handoff carries.
const MAX_LISTENERS: usize = 16;
/// How long either side waits for the other's next message.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// The listening sockets a proxy holds, by name: `http` (and `https` once
/// TLS listens). Handoff passes every one of them.
#[derive(Debug, Default)]
pub struct Listeners(Vec<(String, TcpListener)>);

impl Listeners {
    /// Adds (or replaces) the listener called `name`.
    pub fn insert(&mut self, name: &str, listener: TcpListener) {
        self.0.retain(|(n, _)| n != name);
        self.0.push((name.to_owned(), listener));
    }

    /// Removes and returns the listener called `name`.
    pub fn take(&mut self, name: &str) -> Option<TcpListener> {
        let at = self.0.iter().position(|(n, _)| n == name)?;
        Some(self.0.remove(at).1)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }

    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Copies of the sockets (`dup`), for the handoff server to pass on.
    pub(crate) fn duplicate(&self) -> std::io::Result<Vec<(String, TcpListener)>> {
        self.0
            .iter()
            .map(|(n, l)| Ok((n.clone(), l.try_clone()?)))
            .collect()
    }
}

/// The first line the running proxy sends, with the sockets attached.
#[derive(Debug, Serialize, Deserialize)]
struct Offer {
    listeners: Vec<String>,
    pid: u32,
}

/// Whether this proxy has handed its listeners to a new process; shared by
/// the handoff server, the workers (which then close HTTP/1 connections after
/// their next response) and `run` (which then stops the process).
#[derive(Clone)]
pub(crate) struct HandedOff {
    flag: Arc<AtomicBool>,
    notify: watch::Sender<bool>,
}

impl HandedOff {
    pub(crate) fn new() -> HandedOff {
        HandedOff {
            flag: Arc::new(AtomicBool::new(false)),
            notify: watch::channel(false).0,
        }
    }

    pub(crate) fn is_set(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    fn set(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.send_replace(true);
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<bool> {
        self.notify.subscribe()
    }
}

/// Serves the handoff socket until the proxy stops or has handed off.
pub(crate) async fn serve(
    listener: std::os::unix::net::UnixListener,
    held: Vec<(String, TcpListener)>,
    handed_off: HandedOff,
    mut stopped: watch::Receiver<bool>,
) {
    let listener = match tokio::net::UnixListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            crate::log::text(&format!("cannot use the handoff socket: {e}"));
            return;
        }
    };
    let held = Arc::new(held);
    loop {
        let stream = tokio::select! {
            biased;
            _ = stopped.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let (held, handed_off) = (Arc::clone(&held), handed_off.clone());
        let given = tokio::task::spawn_blocking(move || {
            let stream = stream.into_std()?;
            stream.set_nonblocking(false)?;
            give(&stream, &held, &handed_off)
        })
        .await;
        match given {
            Ok(Ok(())) => return,
            Ok(Err(e)) => crate::log::event(
                &serde_json::json!({ "event": "proxy.handoff_refused", "error": e.to_string() }),
            ),
            Err(e) => crate::log::text(&format!("the handoff task failed: {e}")),
        }
    }
}

/// The old side of one handoff.
fn give(
    stream: &UnixStream,
    held: &[(String, TcpListener)],
    handed_off: &HandedOff,
) -> std::io::Result<()> {
    let peer = rustix::net::sockopt::socket_peercred(stream)?;
    if peer.uid != rustix::process::getuid() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "a process of another user (uid {}) asked for the listeners",
                peer.uid.as_raw()
            ),
        ));
    }
    stream.set_read_timeout(Some(STEP_TIMEOUT))?;
    stream.set_write_timeout(Some(STEP_TIMEOUT))?;
    let offer = Offer {
        listeners: held.iter().map(|(n, _)| n.clone()).collect(),
        pid: std::process::id(),
    };
    let mut line = serde_json::to_vec(&offer).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let fds: Vec<_> = held.iter().map(|(_, l)| l.as_fd()).collect();
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(std::io::Error::other("too many listeners for one message"));
    }
    let sent = rustix::net::sendmsg(
        stream,
        &[IoSlice::new(&line)],
        &mut control,
        SendFlags::empty(),
    )?;
    if sent < line.len() {
        (&*stream).write_all(&line[sent..])?;
    }
    let mut reader = BufReader::new(stream);
    expect_line(&mut reader, "ready")?;
    handed_off.set();
    (&*stream).write_all(b"released\n")?;
    crate::log::event(
        &serde_json::json!({ "event": "proxy.handed_off", "listeners": offer.listeners }),
    );
    Ok(())
}

fn expect_line(reader: &mut impl BufRead, wanted: &str) -> std::io::Result<()> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if line.trim_end() == wanted {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("expected `{wanted}`, got {:?}", line.trim_end()),
        ))
    }
}

/// The new side's half-done handoff: the listeners received, the old
/// process still serving until `finish`.
pub(crate) struct Taken {
    pub(crate) listeners: Listeners,
    /// The process that handed them over.
    pub(crate) from_pid: u32,
    stream: UnixStream,
    path: PathBuf,
}

/// Connects to the running proxy's handoff socket and receives its listeners.
pub(crate) fn receive(path: &Path) -> Result<Taken, ProxyError> {
    let failed = |message: String| ProxyError::Handoff {
        path: path.to_owned(),
        message,
    };
    let stream =
        UnixStream::connect(path).map_err(|e| failed(format!("no proxy answers on it ({e})")))?;
    stream
        .set_read_timeout(Some(STEP_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(STEP_TIMEOUT)))
        .map_err(|e| failed(e.to_string()))?;
    let mut space =
        vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_LISTENERS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut buf = vec![0u8; 4096];
    let received = rustix::net::recvmsg(
        &stream,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| failed(format!("cannot receive the listeners: {e}")))?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(passed) = message {
            fds.extend(passed);
        }
    }
    let mut line = buf[..received.bytes].to_vec();
    let mut reader = BufReader::new(&stream);
    if !line.ends_with(b"\n") {
        reader
            .read_until(b'\n', &mut line)
            .map_err(|e| failed(format!("cannot read the offer: {e}")))?;
    }
    let offer: Offer = serde_json::from_slice(&line)
        .map_err(|e| failed(format!("the running proxy sent an unreadable offer: {e}")))?;
    if offer.listeners.len() != fds.len() {
        return Err(failed(format!(
            "the running proxy named {} listener(s) but passed {}",
            offer.listeners.len(),
            fds.len()
        )));
    }
    let mut listeners = Listeners::default();
    for (name, fd) in offer.listeners.into_iter().zip(fds) {
        listeners.insert(&name, TcpListener::from(fd));
    }
    Ok(Taken {
        listeners,
        from_pid: offer.pid,
        stream,
        path: path.to_owned(),
    })
}

impl Taken {
    /// Tells the old process this one serves; returns once it let go.
    pub(crate) fn finish(self) -> Result<u32, ProxyError> {
        let failed = |message: String| ProxyError::Handoff {
            path: self.path.clone(),
            message,
        };
        (&self.stream)
            .write_all(b"ready\n")
            .map_err(|e| failed(format!("cannot tell the old proxy: {e}")))?;
        let mut reader = BufReader::new(&self.stream);
        expect_line(&mut reader, "released")
            .map_err(|e| failed(format!("the old proxy did not let go: {e}")))?;
        Ok(self.from_pid)
    }
}

/// Where a socket is bound before it is renamed over `path`.
pub(crate) fn staging(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "socket".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.{}", std::process::id()))
}
