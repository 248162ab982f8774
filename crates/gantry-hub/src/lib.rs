//! The tracker hub: products, items, API keys and the agent API, over
//! SQLite or PostgreSQL.
//!
//! `serve` runs the HTTP server on a listener it is given (tests bind
//! `127.0.0.1:0`); `Store` is the database, which the CLI also uses
//! directly for `gantry hub key ...` and `gantry hub user add`. The
//! storage seam is `db::Backend`; all queries live in `store`, once.
//! The hub never logs or returns a key's secret, a password or a
//! database URL's password.

mod api;
mod blobs;
mod clock;
mod context;
mod db;
mod error;
pub mod model;
mod server;
mod store;

pub use api::{Limits, serve};
pub use db::Location;
pub use error::HubError;
pub use server::{ServeOptions, run};
pub use store::{CreatedKey, KeySpec, Store};
