//! The first bytes of a client connection, read under a deadline before
//! hyper sees the connection: a client that sends nothing, or stops inside
//! the HTTP/2 preface, is dropped when the deadline passes (hyper's own
//! protocol detection would wait forever). The bytes read are handed back
//! in front of the stream (`Rewound`), so hyper reads them again.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};

/// What an HTTP/2 connection starts with (RFC 9113, 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the client's first bytes say it speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    Http2,
}

/// Reads until the bytes are the whole HTTP/2 preface or cannot become it,
/// within `deadline`; `None` when the client closed or was too slow.
pub(crate) async fn read<S>(mut stream: S, deadline: Duration) -> Option<(Protocol, Rewound<S>)>
where
    S: AsyncRead + Unpin,
{
    let mut seen = Vec::with_capacity(H2_PREFACE.len());
    let reading = async {
        loop {
            let mut chunk = [0u8; H2_PREFACE.len()];
            let want = H2_PREFACE.len() - seen.len();
            let n = stream.read(&mut chunk[..want]).await.ok()?;
            if n == 0 {
                return None;
            }
            seen.extend_from_slice(&chunk[..n]);
            if !H2_PREFACE.starts_with(&seen) {
                return Some(Protocol::Http1);
            }
            if seen.len() == H2_PREFACE.len() {
                return Some(Protocol::Http2);
            }
        }
    };
    let protocol = tokio::time::timeout(deadline, reading).await.ok()??;
    Some((
        protocol,
        Rewound {
            prefix: seen,
            read: 0,
            inner: stream,
        },
    ))
}

/// A stream with bytes already read put back in front of it.
pub(crate) struct Rewound<S> {
    prefix: Vec<u8>,
    read: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewound<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.read < this.prefix.len() {
            let rest = &this.prefix[this.read..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.read += n;
            if this.read == this.prefix.len() {
                this.prefix = Vec::new();
                this.read = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewound<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn http1_is_known_from_its_first_byte_and_the_bytes_come_back() {
        let (mut client, server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"GET / HTTP/1.1\r\n")
            .await
            .expect("write");
        let (protocol, mut rewound) = read(server, Duration::from_secs(5)).await.expect("read");
        assert_eq!(protocol, Protocol::Http1);
        let mut again = [0u8; 16];
        rewound.read_exact(&mut again).await.expect("again");
        assert_eq!(&again, b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn a_partial_preface_runs_out_of_time() {
        let (mut client, server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"PRI * HTTP/2.0\r\n")
            .await
            .expect("write");
        assert!(read(server, Duration::from_millis(50)).await.is_none());
    }
}
