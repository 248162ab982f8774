//! Ports leased to instances, for the port allocator (`ports`). A lease
//! outlives the agent process, so a restarted agent never hands out a port
//! it already gave to a running instance.

use rusqlite::params;

use super::{Store, StoreError, is_unique_violation, now_ms};

/// A port held by an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortLease {
    pub port: u16,
    pub instance_id: String,
    /// Unix time in milliseconds.
    pub allocated_at: u64,
}

impl Store {
    /// Every port lease, by port.
    pub fn port_allocations(&self) -> Result<Vec<PortLease>, StoreError> {
        self.rows(
            "SELECT port, instance_id, allocated_at FROM port_allocations ORDER BY port",
            [],
            read_lease,
        )
    }

    /// The port leased to an instance, if any.
    pub(crate) fn port_of(&self, instance_id: &str) -> Result<Option<u16>, StoreError> {
        self.row(
            "SELECT port FROM port_allocations WHERE instance_id = ?1",
            [instance_id],
            |row| row.get(0),
        )
    }

    /// Leases `port` to an instance and moves the round-robin cursor to it, in
    /// one transaction. `Ok(false)` when the port, or a port for this
    /// instance, is already leased: nothing changed.
    pub(crate) fn lease_port(&self, instance_id: &str, port: u16) -> Result<bool, StoreError> {
        let tx = self.conn.unchecked_transaction()?;
        let inserted = tx.execute(
            "INSERT INTO port_allocations (port, instance_id, allocated_at) VALUES (?1, ?2, ?3)",
            params![port, instance_id, now_ms()],
        );
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        tx.execute(
            "INSERT INTO port_cursor (id, last) VALUES (1, ?1) \
             ON CONFLICT (id) DO UPDATE SET last = ?1",
            [port],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Ends an instance's lease; returns the port it held.
    pub(crate) fn release_port(&self, instance_id: &str) -> Result<Option<u16>, StoreError> {
        self.row(
            "DELETE FROM port_allocations WHERE instance_id = ?1 RETURNING port",
            [instance_id],
            |row| row.get(0),
        )
    }

    /// Ends the leases no instance needs any more, and returns them: leases
    /// of instances the store has no row for (a deploy leases a port just
    /// before it records the instance, and may have died in between) or
    /// that are stopped (stopping records the state, then gives the port
    /// back). A failed instance keeps its port for a restart.
    ///
    /// Only for an agent that is starting: a deploy running meanwhile may
    /// hold a lease whose instance it has not recorded yet.
    pub(crate) fn release_unused_leases(&self) -> Result<Vec<PortLease>, StoreError> {
        self.rows(
            "DELETE FROM port_allocations WHERE instance_id NOT IN \
             (SELECT id FROM instances WHERE state != 'stopped') \
             RETURNING port, instance_id, allocated_at",
            [],
            read_lease,
        )
    }

    /// The port leased last: the round-robin search resumes after it.
    pub(crate) fn port_cursor(&self) -> Result<Option<u16>, StoreError> {
        self.row("SELECT last FROM port_cursor WHERE id = 1", [], |row| {
            row.get(0)
        })
    }
}

/// A lease from a row of `port, instance_id, allocated_at`.
fn read_lease(row: &rusqlite::Row<'_>) -> rusqlite::Result<PortLease> {
    Ok(PortLease {
        port: row.get(0)?,
        instance_id: row.get(1)?,
        allocated_at: row.get(2)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_is_leased_once_and_an_instance_holds_one_port() {
        let store = Store::open_in_memory().expect("store");
        assert!(store.lease_port("i-1", 20_000).expect("lease"));
        assert!(!store.lease_port("i-2", 20_000).expect("taken port"));
        assert!(!store.lease_port("i-1", 20_001).expect("instance has one"));
        assert_eq!(store.port_of("i-1").expect("query"), Some(20_000));
        assert_eq!(store.port_cursor().expect("cursor"), Some(20_000));
        assert_eq!(store.release_port("i-1").expect("release"), Some(20_000));
        assert_eq!(store.release_port("i-1").expect("release"), None);
        assert!(store.port_allocations().expect("list").is_empty());
        assert_eq!(store.port_cursor().expect("cursor"), Some(20_000));
    }

    #[test]
    fn a_starting_agent_takes_back_ports_of_instances_never_recorded_or_stopped() {
        use gantry_core::agent_api::InstanceState;

        use crate::store::instances::tests::{add, set_state, store_with_releases};

        let store = store_with_releases();
        add(&store, "live", "shop", "web", "r-1");
        add(&store, "stopped", "shop", "web", "r-1");
        add(&store, "failed", "shop", "web", "r-1");
        set_state(&store, "stopped", InstanceState::Stopped);
        set_state(&store, "failed", InstanceState::Failed);
        for (port, id) in [
            (20_001, "live"),
            (20_002, "stopped"),
            (20_003, "failed"),
            (20_004, "never-recorded"),
        ] {
            assert!(store.lease_port(id, port).expect("lease"));
        }

        let mut released: Vec<_> = store
            .release_unused_leases()
            .expect("release")
            .into_iter()
            .map(|l| (l.port, l.instance_id))
            .collect();
        released.sort();
        assert_eq!(
            released,
            [
                (20_002, "stopped".to_owned()),
                (20_004, "never-recorded".to_owned())
            ]
        );
        let kept: Vec<_> = store
            .port_allocations()
            .expect("list")
            .into_iter()
            .map(|l| l.instance_id)
            .collect();
        assert_eq!(kept, ["live", "failed"]);
    }
}
