//! Rate limits: one per client address on every request (before the key is
//! even looked at, so guessing keys is slow too), and one per API key. Both
//! answer 429 with Retry-After. Governor's GCRA keeps a few bytes per key;
//! addresses not seen for a while are forgotten by `forget_idle`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};

pub(super) use crate::store::client_network;

use crate::error::HubError;

/// How much the hub lets one client do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Requests a minute from one client address (bursts up to this).
    pub per_address_per_minute: u32,
    /// Requests a minute with one API key, unless the key has its own.
    pub per_key_per_minute: u32,
    /// The largest request body, in bytes.
    pub body_bytes: usize,
    /// How long a client may take to send a request's headers.
    pub header_timeout: std::time::Duration,
    /// How long a request may take, its body included, before 408.
    pub request_timeout: std::time::Duration,
    /// Connections open at once; more are closed as they come.
    pub max_connections: usize,
    /// Connections open at once from one client address (an IPv6 /64
    /// counts as one); more are closed as they come. Behind Gantry's proxy
    /// its connections count only to `max_connections`: it caps its own
    /// clients.
    pub max_connections_per_address: usize,
    /// How long a client may take nothing of an answer the hub is sending
    /// (an export, an attachment, any answer) before the hub resets its
    /// connection. Only a write waiting on the client counts: a slow reader
    /// that keeps reading is never cut off.
    pub stall: std::time::Duration,
    /// Take the client's address from `X-Real-IP` when the peer is on
    /// loopback: set when the hub runs behind Gantry's proxy, which writes
    /// that header itself.
    pub behind_proxy: bool,
    /// Logins, submitted ideas and votes a minute from one client address
    /// (on top of `per_address_per_minute`): what a person does, not a script.
    pub public_per_address_per_minute: u32,
    /// Login attempts a minute for one user name, from anywhere.
    pub logins_per_name_per_minute: u32,
    /// How long after its form was handed out an idea may be sent: people
    /// take longer to type one.
    pub form_min_seconds: u64,
    /// The bytes one product's attachments may take in all (each counted,
    /// equal files too); more is 413.
    pub attachment_quota_bytes: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            per_address_per_minute: 1200,
            per_key_per_minute: 600,
            body_bytes: 256 * 1024,
            header_timeout: std::time::Duration::from_secs(10),
            request_timeout: std::time::Duration::from_secs(30),
            max_connections: 1024,
            max_connections_per_address: 64,
            stall: std::time::Duration::from_secs(30),
            behind_proxy: false,
            public_per_address_per_minute: 10,
            logins_per_name_per_minute: 10,
            form_min_seconds: 3,
            attachment_quota_bytes: 1024 * 1024 * 1024,
        }
    }
}

pub struct RateLimits {
    per_address: DefaultKeyedRateLimiter<IpAddr>,
    public: DefaultKeyedRateLimiter<IpAddr>,
    logins: DefaultKeyedRateLimiter<String>,
    per_key: Mutex<HashMap<i64, (u32, Arc<DefaultDirectRateLimiter>)>>,
    default_key_rate: u32,
}

fn quota(per_minute: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN))
}

fn seconds_until(not_until: &governor::NotUntil<<DefaultClock as Clock>::Instant>) -> u64 {
    let wait = not_until.wait_time_from(DefaultClock::default().now());
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

impl RateLimits {
    pub fn new(limits: &Limits) -> RateLimits {
        RateLimits {
            per_address: DefaultKeyedRateLimiter::keyed(quota(limits.per_address_per_minute)),
            public: DefaultKeyedRateLimiter::keyed(quota(limits.public_per_address_per_minute)),
            logins: DefaultKeyedRateLimiter::keyed(quota(limits.logins_per_name_per_minute)),
            per_key: Mutex::new(HashMap::new()),
            default_key_rate: limits.per_key_per_minute,
        }
    }

    pub fn check_address(&self, address: IpAddr) -> Result<(), HubError> {
        self.per_address
            .check_key(&client_network(address))
            .map_err(|n| HubError::RateLimited {
                who: "this address",
                retry_after: seconds_until(&n),
            })
    }

    /// The stricter limit of logins, ideas and votes from one address.
    pub fn check_public(&self, address: IpAddr) -> Result<(), HubError> {
        self.public
            .check_key(&client_network(address))
            .map_err(|n| HubError::RateLimited {
                who: "this address",
                retry_after: seconds_until(&n),
            })
    }

    /// Login attempts for one user name, wherever they come from.
    pub fn check_login(&self, name: &str) -> Result<(), HubError> {
        let name: String = name.chars().take(64).collect();
        self.logins
            .check_key(&name)
            .map_err(|n| HubError::RateLimited {
                who: "logins to this user",
                retry_after: seconds_until(&n),
            })
    }

    pub fn check_key(&self, key_id: i64, own_rate: Option<u32>) -> Result<(), HubError> {
        let rate = own_rate.unwrap_or(self.default_key_rate);
        let limiter = {
            let mut keys = self
                .per_key
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let entry = keys.entry(key_id).or_insert_with(|| {
                (
                    rate,
                    Arc::new(DefaultDirectRateLimiter::direct(quota(rate))),
                )
            });
            if entry.0 != rate {
                *entry = (
                    rate,
                    Arc::new(DefaultDirectRateLimiter::direct(quota(rate))),
                );
            }
            entry.1.clone()
        };
        limiter.check().map_err(|n| HubError::RateLimited {
            who: "this API key",
            retry_after: seconds_until(&n),
        })
    }

    /// Drops the state of addresses whose bucket is full again.
    pub fn forget_idle(&self) {
        self.per_address.retain_recent();
        self.per_address.shrink_to_fit();
        self.public.retain_recent();
        self.public.shrink_to_fit();
        self.logins.retain_recent();
        self.logins.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_counted_by_their_64_network() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1"
            .parse()
            .unwrap_or(IpAddr::from([0; 4]));
        let b: IpAddr = "2001:db8:1:2:bbbb::9"
            .parse()
            .unwrap_or(IpAddr::from([0; 4]));
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap_or(IpAddr::from([0; 4]));
        assert_eq!(client_network(a), client_network(b));
        assert_ne!(client_network(a), client_network(other));
        let v4: IpAddr = "192.0.2.7".parse().unwrap_or(IpAddr::from([0; 4]));
        assert_eq!(client_network(v4), v4);
    }

    #[test]
    fn an_address_over_its_quota_is_told_when_to_retry() {
        let limits = RateLimits::new(&Limits {
            per_address_per_minute: 2,
            ..Limits::default()
        });
        let client = IpAddr::from([192, 0, 2, 7]);
        assert!(limits.check_address(client).is_ok());
        assert!(limits.check_address(client).is_ok());
        match limits.check_address(client) {
            Err(HubError::RateLimited { retry_after, .. }) => {
                assert!((1..=60).contains(&retry_after))
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(
            limits.check_address(IpAddr::from([192, 0, 2, 8])).is_ok(),
            "others are not slowed"
        );
    }
}
