//! Where a long operation reports what it is doing: stderr lines for
//! people, JSON events for scripts, nothing for a caller that does not watch.

/// Where a long operation reports what it is doing (stderr lines, JSON
/// events). Hosts deploy in parallel, so it is shared between threads.
pub trait Progress: Sync {
    fn step(&self, message: &str);
}

/// Progress nobody watches.
pub struct Silent;

impl Progress for Silent {
    fn step(&self, _: &str) {}
}
