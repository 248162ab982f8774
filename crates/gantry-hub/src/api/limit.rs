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
    /// Take the client's address from `X-Real-IP` when the peer is on
    /// loopback: set when the hub runs behind Gantry's proxy, which writes
    /// that header itself.
    pub behind_proxy: bool,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            per_address_per_minute: 1200,
            per_key_per_minute: 600,
            body_bytes: 256 * 1024,
            behind_proxy: false,
        }
    }
}

pub struct RateLimits {
    per_address: DefaultKeyedRateLimiter<IpAddr>,
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
            per_key: Mutex::new(HashMap::new()),
            default_key_rate: limits.per_key_per_minute,
        }
    }

    pub fn check_address(&self, address: IpAddr) -> Result<(), HubError> {
        self.per_address
            .check_key(&address)
            .map_err(|n| HubError::RateLimited {
                who: "this address",
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
    }
}
