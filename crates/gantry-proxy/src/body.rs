//! The response body the proxy streams to the client, frame by frame and
//! never buffered whole. It carries the request's `Exchange`, its in-flight
//! count and its upstream connection until it ends: then the connection goes
//! back to the pool. It gives up when the upstream stops sending for longer
//! than the idle timeout. A static site's file streams from disk the same
//! way, a buffer at a time. Each time hyper asks for a frame, the client
//! has taken the last one: the body tells the connection's `Activity`, so
//! that a response the client stops reading is let go (its HTTP/2 stream
//! reset, or its connection closed). (Request bodies go upstream
//! as hyper hands them over, with nothing added.)

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use bytes::BytesMut;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::io::AsyncRead;
use tokio::time::{Instant, Sleep};

use crate::exchange::Exchange;
use crate::limits::OpenRequest;
use crate::pool::{Connection, Pool};
use crate::upstream::InFlight;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body sent to the client.
pub(crate) struct ProxyBody {
    kind: Kind,
    /// Keeps the client connection from counting as idle until the
    /// response is done (`limits::Activity`).
    open: Option<OpenRequest>,
}

enum Kind {
    /// A page the proxy wrote itself.
    Page(Option<Bytes>, Option<Exchange>),
    Upstream(Box<Streaming>),
    File(Box<Reading>),
}

/// The most of a body handed to hyper at once: a file is read this much at
/// a time, and an upstream's larger frames are cut to it. The clock of a
/// stalled client (`limits::Activity`) restarts a frame at a time, so a
/// client that reads slowly but steadily need take only this much per idle
/// timeout.
const MAX_FRAME: usize = 64 * 1024;

/// A file (or a part of it, or its compressed form) read as the client
/// takes it.
struct Reading {
    reader: Pin<Box<dyn AsyncRead + Send>>,
    buffer: BytesMut,
    /// Bytes still to come when the length is known (`Content-Length`).
    remaining: Option<u64>,
    done: bool,
    exchange: Exchange,
}

impl Drop for Reading {
    fn drop(&mut self) {
        if !self.done && self.remaining != Some(0) {
            self.exchange.set_error("response not finished");
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the file ended {0} bytes before its length")]
struct Truncated(u64);

impl Reading {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done || self.remaining == Some(0) {
            self.done = true;
            return Poll::Ready(None);
        }
        if self.buffer.capacity() < MAX_FRAME {
            self.buffer.reserve(MAX_FRAME);
        }
        match tokio_util::io::poll_read_buf(self.reader.as_mut(), cx, &mut self.buffer) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(0)) => {
                self.done = true;
                match self.remaining {
                    Some(left) if left > 0 => {
                        self.exchange.set_error("file shorter than its length");
                        Poll::Ready(Some(Err(Box::new(Truncated(left)))))
                    }
                    _ => Poll::Ready(None),
                }
            }
            Poll::Ready(Ok(read)) => {
                if let Some(left) = &mut self.remaining {
                    *left = left.saturating_sub(read as u64);
                }
                Poll::Ready(Some(Ok(Frame::data(self.buffer.split().freeze()))))
            }
            Poll::Ready(Err(error)) => {
                self.done = true;
                self.exchange.set_error("file read failed");
                Poll::Ready(Some(Err(Box::new(error))))
            }
        }
    }
}

struct Streaming {
    inner: Incoming,
    /// What is left of the upstream's last frame, handed on `MAX_FRAME` at
    /// a time.
    rest: Bytes,
    idle: Duration,
    /// Made on the first wait, then reset; `armed` while a wait is timed.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
    done: bool,
    /// Back to the pool once the response is read to its end.
    connection: Option<(Arc<Pool>, Connection)>,
    exchange: Exchange,
    _in_flight: InFlight,
}

impl Streaming {
    fn finished(&mut self) {
        self.done = true;
        if let Some((pool, connection)) = self.connection.take() {
            pool.put_back(connection);
        }
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        // A body hyper never had to read (none, or zero bytes) ended cleanly.
        if !self.done && self.is_end_stream() {
            self.finished();
        }
        if !self.done {
            self.exchange.set_error("response not finished");
        }
    }
}

impl ProxyBody {
    pub(crate) fn empty() -> ProxyBody {
        ProxyBody {
            kind: Kind::Page(None, None),
            open: None,
        }
    }

    /// A short answer of the proxy's own, outside any exchange.
    pub(crate) fn text(text: Bytes) -> ProxyBody {
        ProxyBody {
            kind: Kind::Page(Some(text), None),
            open: None,
        }
    }

    /// A page; the exchange ends when the client has it.
    pub(crate) fn page(text: Bytes, exchange: Exchange) -> ProxyBody {
        ProxyBody {
            kind: Kind::Page(Some(text), Some(exchange)),
            open: None,
        }
    }

    pub(crate) fn upstream(
        inner: Incoming,
        idle: Duration,
        exchange: Exchange,
        in_flight: InFlight,
        connection: (Arc<Pool>, Connection),
    ) -> ProxyBody {
        ProxyBody {
            kind: Kind::Upstream(Box::new(Streaming {
                inner,
                rest: Bytes::new(),
                idle,
                timer: None,
                armed: false,
                done: false,
                connection: Some(connection),
                exchange,
                _in_flight: in_flight,
            })),
            open: None,
        }
    }

    /// A static site's file: `length` bytes from `reader`, or what it gives
    /// until its end when `length` is None (compressed as it is read).
    pub(crate) fn file(
        reader: Pin<Box<dyn AsyncRead + Send>>,
        length: Option<u64>,
        exchange: Exchange,
    ) -> ProxyBody {
        ProxyBody {
            kind: Kind::File(Box::new(Reading {
                reader,
                buffer: BytesMut::new(),
                remaining: length,
                done: false,
                exchange,
            })),
            open: None,
        }
    }

    /// No body (a 304, a HEAD); the exchange ends when the answer is sent.
    pub(crate) fn file_done(exchange: Exchange) -> ProxyBody {
        ProxyBody {
            kind: Kind::Page(None, Some(exchange)),
            open: None,
        }
    }

    /// The body, holding `open` until it is done or dropped. From here the
    /// response waits on the client, until hyper asks for a frame.
    pub(crate) fn holding(mut self, open: OpenRequest) -> ProxyBody {
        open.waiting_on_client(true);
        self.open = Some(open);
        self
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing for {0:?}")]
struct IdleTimeout(Duration);

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = match &mut self.kind {
            Kind::Page(text, exchange) => {
                let frame = text.take().map(|t| Ok(Frame::data(t)));
                if frame.is_none() {
                    exchange.take();
                }
                Poll::Ready(frame)
            }
            Kind::Upstream(streaming) => streaming.poll(cx),
            Kind::File(reading) => reading.poll(cx),
        };
        // Asked again, hyper has found room for more: the client took what
        // it had. A frame handed over now waits on the client in its turn.
        if let Some(open) = &self.open {
            open.waiting_on_client(matches!(polled, Poll::Ready(Some(Ok(_)))));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Page(text, _) => text.is_none(),
            Kind::Upstream(streaming) => streaming.is_end_stream(),
            Kind::File(reading) => reading.done || reading.remaining == Some(0),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Page(text, _) => {
                SizeHint::with_exact(text.as_ref().map_or(0, |t| t.len() as u64))
            }
            Kind::Upstream(streaming) => streaming.size_hint(),
            Kind::File(reading) => reading
                .remaining
                .map_or_else(SizeHint::default, SizeHint::with_exact),
        }
    }
}

impl Streaming {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.rest.is_empty() {
            return Poll::Ready(Some(Ok(self.next_piece())));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.armed = false;
                match frame.into_data() {
                    Ok(data) => {
                        self.rest = data;
                        Poll::Ready(Some(Ok(self.next_piece())))
                    }
                    Err(trailers) => Poll::Ready(Some(Ok(trailers))),
                }
            }
            Poll::Ready(Some(Err(error))) => {
                self.done = true;
                self.exchange.set_error("upstream body failed");
                Poll::Ready(Some(Err(error.into())))
            }
            Poll::Ready(None) => {
                self.finished();
                Poll::Ready(None)
            }
            Poll::Pending => self.wait(cx),
        }
    }

    fn next_piece(&mut self) -> Frame<Bytes> {
        let size = self.rest.len().min(MAX_FRAME);
        Frame::data(self.rest.split_to(size))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        let mut hint = SizeHint::new();
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(rest));
        }
        hint.set_lower(inner.lower().saturating_add(rest));
        hint
    }

    /// Times how long the upstream has been quiet.
    fn wait(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let idle = self.idle;
        let timer = match &mut self.timer {
            Some(timer) => {
                if !self.armed {
                    timer.as_mut().reset(Instant::now() + idle);
                }
                timer
            }
            None => self.timer.insert(Box::pin(tokio::time::sleep(idle))),
        };
        self.armed = true;
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.done = true;
                self.exchange.set_error("upstream idle timeout");
                Poll::Ready(Some(Err(Box::new(IdleTimeout(idle)))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
