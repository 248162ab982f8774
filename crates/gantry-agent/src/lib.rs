//! The agent: one per host. It keeps the host's services running (process
//! driver, restart policy, health checks, logs), records releases in SQLite,
//! and serves its API on a Unix socket. It writes what it is about to do
//! before doing it, so a restarted agent re-adopts its services and finishes
//! or rolls back a deploy it was in the middle of.

pub mod admission;
pub mod agent;
pub mod agent_log;
pub mod agent_user;
pub mod api;
pub mod artifact;
pub mod container;
pub mod container_instance;
pub mod credentials;
pub mod daemon;
pub mod deploy;
pub mod health;
pub mod instance;
pub mod isolation;
pub mod logs;
pub mod openapi;
pub mod ports;
pub mod process;
pub mod proxy;
pub mod reconcile;
pub mod retire;
pub mod routes;
pub mod status;
pub mod store;
pub mod supervisor;
pub mod tails;
pub mod upload;
