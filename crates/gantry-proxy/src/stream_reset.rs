//! HTTP/2 streams the proxy can reset one at a time. hyper runs each
//! stream of a connection in a task of its own, spawned by the executor it
//! is given; `ResettableStreams` spawns it so that the stream's
//! `StreamReset` can end it. Ending it drops the response body, and with it
//! the upstream connection or the file, and h2 resets the stream
//! (RST_STREAM, CANCEL) while the connection and its other streams go on.
//! That is how a response the client has stopped taking is let go
//! (`limits::Activity`) without cutting the requests beside it.
//!
//! The body cannot end itself: hyper polls it only while the stream has
//! window for what it would give, and a stalled stream has none.
//!
//! Must never: end a task of its own accord, or reach HTTP/1, whose
//! responses run in their connection's task (`StreamReset::of_this_task`
//! is `None` there).

use std::future::Future;

use tokio_util::sync::CancellationToken;

tokio::task_local! {
    static RESET: StreamReset;
}

/// Ends one HTTP/2 stream's task (see the module).
#[derive(Clone, Debug, Default)]
pub(crate) struct StreamReset(CancellationToken);

impl StreamReset {
    /// The reset of the stream whose task calls this, when it is one that
    /// `ResettableStreams` spawned.
    pub(crate) fn of_this_task() -> Option<StreamReset> {
        RESET.try_with(StreamReset::clone).ok()
    }

    /// Ends the stream's task; at once if it is waiting, else at its next
    /// wait.
    pub(crate) fn reset(&self) {
        self.0.cancel();
    }

    #[cfg(test)]
    pub(crate) fn is_reset(&self) -> bool {
        self.0.is_cancelled()
    }
}

/// The executor of the proxy's HTTP/2 connections: spawns each stream on
/// the worker's runtime, as `TokioExecutor` would, with a `StreamReset`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ResettableStreams;

impl<F> hyper::rt::Executor<F> for ResettableStreams
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, stream: F) {
        let reset = StreamReset::default();
        let cancelled = reset.0.clone();
        tokio::spawn(RESET.scope(reset, async move {
            tokio::select! {
                _ = stream => {}
                () = cancelled.cancelled() => {}
            }
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor as _;

    #[tokio::test]
    async fn a_reset_ends_its_stream_task_and_no_other() {
        let (reset_tx, reset_rx) = tokio::sync::oneshot::channel();
        let (other_tx, other_rx) = tokio::sync::oneshot::channel();
        let (ended_tx, ended_rx) = tokio::sync::oneshot::channel::<()>();
        ResettableStreams.execute(async move {
            let _ = reset_tx.send(StreamReset::of_this_task());
            // Dropped, unsent, when the task is ended.
            let _ended = ended_tx;
            std::future::pending::<()>().await;
        });
        ResettableStreams.execute(async move {
            let _ = other_tx.send(StreamReset::of_this_task());
            std::future::pending::<()>().await;
        });
        let reset = reset_rx
            .await
            .expect("sent")
            .expect("a stream task has its reset");
        let other = other_rx.await.expect("sent").expect("each has one");
        reset.reset();
        assert!(ended_rx.await.is_err(), "the reset task is dropped");
        assert!(!other.is_reset());
        assert!(StreamReset::of_this_task().is_none(), "none outside");
    }
}
