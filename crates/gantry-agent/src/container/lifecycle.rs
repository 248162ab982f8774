//! How long a piece of work waited on the engine's container lifecycle
//! calls: create, start, stop, and remove of a container that exists. These
//! are the calls any replacement of a container makes (`docker run` is a
//! create and a start; `docker stop` and `docker rm` the others), so a
//! deploy's phases can tell the engine's share of their time from the
//! agent's own (inspects, secret files, the store, the proxy).
//!
//! Counted per task: [`measured`] opens a count for the future it runs, and
//! each call made while it runs adds its duration. Calls side by side (two
//! replicas starting at once) each add theirs, so the count can exceed the
//! wall time of the work. Work outside a count is not counted.

use std::cell::Cell;
use std::future::Future;
use std::time::{Duration, Instant};

tokio::task_local! {
    static SPENT: Cell<Duration>;
}

/// Runs `work`; what it returns, and the time its lifecycle calls took.
pub async fn measured<T>(work: impl Future<Output = T>) -> (T, Duration) {
    SPENT
        .scope(Cell::new(Duration::ZERO), async {
            let out = work.await;
            (out, SPENT.with(Cell::get))
        })
        .await
}

/// Adds the time since `started` to the count of the work running, if any.
pub(super) fn add(started: Instant) {
    let _ = SPENT.try_with(|spent| spent.set(spent.get() + started.elapsed()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_inside_a_count_add_up_and_calls_outside_do_not() {
        add(Instant::now() - Duration::from_millis(500));
        let ((), spent) = measured(async {
            add(Instant::now() - Duration::from_millis(30));
            futures_util::future::join(
                async { add(Instant::now() - Duration::from_millis(20)) },
                async { add(Instant::now() - Duration::from_millis(10)) },
            )
            .await;
        })
        .await;
        assert!(spent >= Duration::from_millis(60), "{spent:?}");
        assert!(spent < Duration::from_millis(500), "{spent:?}");
    }
}
