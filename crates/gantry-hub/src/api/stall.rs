//! The stall limit: a connection whose client takes none of what the hub
//! writes for `Limits::stall` is reset. It holds every answer, an
//! export's, an attachment's or a small JSON one, to the same rule, and
//! whatever the answer still had to send: a rule in the body's producer
//! would miss the last of an answer, already handed to hyper and the
//! kernel. Only a write that cannot proceed counts; an idle connection, or
//! one waiting on the hub, is never stalled.
//!
//! It must never cut off a client that reads, however slowly: any progress
//! starts the wait again.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// A client's connection, whose writes fail once the client has taken
/// nothing for the stall limit.
pub(super) struct Stalling {
    stream: TcpStream,
    /// The peer, for the log.
    peer: IpAddr,
    answering: Answering,
    limit: Duration,
    /// Armed while a write waits on the client.
    waiting: Option<Pin<Box<Sleep>>>,
}

/// The client a connection's latest request came from, as the hub resolved
/// it (behind Gantry's proxy, the proxy's `X-Real-IP`), so that a reset
/// names it and not only the proxy's loopback address. The connection
/// holds it and its requests set it; HTTP/1.1 answers one request at a
/// time, so a stalled answer is the latest request's.
#[derive(Clone, Default)]
pub(super) struct Answering(Arc<Mutex<Option<IpAddr>>>);

impl Answering {
    pub(super) fn set(&self, client: IpAddr) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(client);
    }

    fn get(&self) -> Option<IpAddr> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The unsent bytes the kernel holds for a client before a write waits.
/// Without it, a socket whose send buffer grew to megabytes says it can
/// be written again only once a third of that has gone: a client reading
/// steadily at 20 KB/s would make no visible progress for a minute and
/// be cut off. With it, progress shows every 64 KiB taken.
const NOTSENT_LOWAT: u32 = 64 * 1024;

impl Stalling {
    pub(super) fn new(stream: TcpStream, peer: IpAddr, limit: Duration) -> Stalling {
        // Without the option (not Linux), progress is only coarser.
        let _ = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(NOTSENT_LOWAT);
        Stalling {
            stream,
            peer,
            answering: Answering::default(),
            limit,
            waiting: None,
        }
    }

    /// Where the connection's requests say whom it answers.
    pub(super) fn answering(&self) -> Answering {
        self.answering.clone()
    }

    /// The client as the request log names it: the latest request's, or
    /// before any, the peer.
    fn client(&self) -> IpAddr {
        self.answering.get().unwrap_or(self.peer)
    }

    /// What a write (or a flush) that made no progress becomes: still
    /// pending, or, past the limit, an error that ends the connection.
    fn stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let limit = self.limit;
        let waiting = self
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        ready!(waiting.as_mut().poll(cx));
        // The peer too: the proxy the client is behind, if any.
        tracing::warn!(
            client = %self.client(),
            peer = %self.peer,
            "a client took nothing for {limit:?}: its connection is reset"
        );
        // A reset, not a close: the kernel drops what it still holds for
        // this client instead of trying to deliver it for minutes more,
        // and the client sees its answer broken, never whole.
        let _ = self.stream.set_zero_linger();
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client stopped reading",
        )))
    }

    fn progress<T>(
        &mut self,
        done: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match done {
            Poll::Pending => self.stalled(cx),
            ready => {
                self.waiting = None;
                ready
            }
        }
    }
}

impl AsyncRead for Stalling {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stalling {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let done = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.progress(done, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let done = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.progress(done, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let done = Pin::new(&mut self.stream).poll_flush(cx);
        self.progress(done, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A connected pair: the hub's end, stall-limited, and the client's.
    async fn pair(limit: Duration) -> (Stalling, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let address = listener.local_addr().expect("its address");
        let client = tokio::spawn(TcpStream::connect(address));
        let (hub, peer) = listener.accept().await.expect("the connection");
        let client = client.await.expect("the client's task");
        let hub = Stalling::new(hub, peer.ip(), limit);
        let lowat = socket2::SockRef::from(&hub.stream).tcp_notsent_lowat();
        assert_eq!(
            lowat.ok(),
            Some(NOTSENT_LOWAT),
            "progress shows every 64 KiB"
        );
        (hub, client.expect("the client's end"))
    }

    #[tokio::test]
    async fn a_reset_names_the_client_the_latest_request_resolved() {
        let (hub, _client) = pair(Duration::from_secs(30)).await;
        assert_eq!(hub.client(), hub.peer, "before a request, the peer");
        let forwarded: IpAddr = "203.0.113.7".parse().expect("an address");
        hub.answering().set(forwarded);
        assert_eq!(hub.client(), forwarded, "as the proxy's X-Real-IP said");
    }

    #[tokio::test]
    async fn a_client_that_takes_nothing_is_cut_off() {
        let (mut hub, _client) = pair(Duration::from_millis(100)).await;
        let chunk = vec![0u8; 64 * 1024];
        let error = loop {
            if let Err(e) = hub.write_all(&chunk).await {
                break e;
            }
        };
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }
}
