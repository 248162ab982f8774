//! How many connections the hub holds open: in all, and from one client
//! address (an IPv6 /64 counted as one), so that one address opening idle
//! sockets cannot take every slot. A connection over a cap is closed as it
//! comes, before a byte of it is read.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use super::limit::{Limits, client_network};

/// The connections open, in all and by client network.
pub(super) struct Connections {
    total: usize,
    per_address: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

impl Connections {
    pub(super) fn new(limits: &Limits) -> Arc<Connections> {
        Arc::new(Connections {
            total: limits.max_connections.max(1),
            per_address: limits.max_connections_per_address.max(1),
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// A slot for one more connection from `client` (`None`: a peer whose
    /// clients are not known yet, Gantry's proxy, held only to the total),
    /// or `None` when a cap is reached. The slot frees when dropped.
    pub(super) fn admit(self: &Arc<Self>, client: Option<IpAddr>) -> Option<Slot> {
        let client = client.map(client_network);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let (total, by_client) = &mut *open;
        if *total >= self.total {
            return None;
        }
        if let Some(client) = client {
            let mine = by_client.entry(client).or_insert(0);
            if *mine >= self.per_address {
                return None;
            }
            *mine += 1;
        }
        *total += 1;
        Some(Slot {
            connections: Arc::clone(self),
            client,
        })
    }
}

/// One open connection's place under the caps.
pub(super) struct Slot {
    connections: Arc<Connections>,
    client: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .connections
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (total, by_client) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(client) = self.client
            && let Some(mine) = by_client.get_mut(&client)
        {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                by_client.remove(&client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(total: usize, per_address: usize) -> Arc<Connections> {
        Connections::new(&Limits {
            max_connections: total,
            max_connections_per_address: per_address,
            ..Limits::default()
        })
    }

    #[test]
    fn one_network_is_held_to_its_cap_and_others_are_not() {
        let connections = caps(10, 2);
        let a = "2001:db8:1:2::1".parse().ok();
        let b = "2001:db8:1:2::2".parse().ok();
        let other = "2001:db8:1:3::1".parse().ok();
        let first = connections.admit(a);
        let _second = connections.admit(b);
        assert!(first.is_some());
        assert!(connections.admit(a).is_none(), "the /64 is full");
        assert!(connections.admit(other).is_some());
        drop(first);
        assert!(connections.admit(b).is_some(), "a slot freed");
    }

    #[test]
    fn the_total_holds_unknown_clients_too() {
        let connections = caps(2, 2);
        let _proxied = connections.admit(None);
        let _one = connections.admit(Some(IpAddr::from([192, 0, 2, 7])));
        assert!(connections.admit(None).is_none());
        assert!(
            connections
                .admit(Some(IpAddr::from([192, 0, 2, 8])))
                .is_none()
        );
    }
}
