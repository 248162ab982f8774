//! The proxy host's own shortages: a file descriptor, socket buffers or
//! memory it could not get. Opening anything fails alike under
//! one (a connection to any upstream, any static file), so the failure says
//! nothing of the upstream or the site: the request gets the 503 page that
//! blames the proxy (`Page::ProxyShort`, with `Retry-After`), no upstream is
//! ejected or counted as failing, and the first of each minute is logged as
//! `proxy.out_of_resources`, the rest counted (`log::Tally`).
//!
//! Must never: take a failure that is an upstream's own (refused,
//! unreachable, reset, too slow) for the proxy's, or every dead upstream
//! would stay in rotation.

use std::io;
use std::time::Duration;

use rustix::io::Errno;

use crate::log::Tally;

/// Failures for want of the proxy's own resources. Under such pressure
/// every request fails alike, so one is logged whole per interval and the
/// rest counted.
pub(crate) static PROXY_SHORT: Tally =
    Tally::new("proxy.out_of_resources", Duration::from_secs(60));

/// What the proxy host runs out of, not its upstreams: descriptors, its
/// own (`EMFILE`) or the system's (`ENFILE`); socket buffers (`ENOBUFS`);
/// memory (`ENOMEM`). Not `EADDRNOTAVAIL`: Linux picks a local port per
/// destination, so running out of them is one upstream's lot, and it is
/// also what an address the host cannot reach gives (`[::1]` without
/// IPv6): that upstream is the one to blame.
const OWN: [Errno; 4] = [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM];

/// Whether `error` is the proxy host's own shortage (`OWN`), which opening
/// anything else would have met too.
pub(crate) fn is_proxys_own(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::OutOfMemory
        || Errno::from_io_error(error).is_some_and(|errno| OWN.contains(&errno))
}

/// Logs a failure to open something for want of the proxy's own resources
/// (`PROXY_SHORT`): `about` names what was being opened, as a field and its
/// value (`"upstream"` and its address, `"service"` and a static site's).
pub(crate) fn record(about: (&str, String), error: &dyn std::fmt::Display) {
    PROXY_SHORT.record(|| {
        let mut detail = serde_json::json!({
            "event": "proxy.out_of_resources",
            "error": error.to_string(),
        });
        detail[about.0] = about.1.into();
        detail
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(errno: Errno) -> io::Error {
        io::Error::from_raw_os_error(errno.raw_os_error())
    }

    /// Out of local ports towards one upstream, or an address the host
    /// cannot use: that upstream's failure, which ejects it.
    #[test]
    fn an_address_the_host_cannot_connect_from_is_the_upstreams() {
        assert!(!is_proxys_own(&os(Errno::ADDRNOTAVAIL)));
    }

    /// A static file that is missing, forbidden or unreadable is the
    /// site's failure: only the proxy's own shortage gets its 503.
    #[test]
    fn a_file_the_site_cannot_give_is_not_the_proxys_shortage() {
        assert!(is_proxys_own(&os(Errno::MFILE)));
        for site in [Errno::NOENT, Errno::ACCESS, Errno::IO, Errno::ISDIR] {
            assert!(!is_proxys_own(&os(site)), "{site:?}");
        }
    }
}
