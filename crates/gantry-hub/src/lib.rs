//! The tracker hub: products, items, API keys and the agent API, over
//! SQLite or PostgreSQL.
//!
//! `serve` runs the HTTP server on a listener it is given (tests bind
//! `127.0.0.1:0`); `Store` is the database, which the CLI also uses
//! directly for `gantry hub key ...` and `gantry hub user add`. The
//! storage seam is `db::Backend`; all queries live in `store`, once.
//! The hub never logs or returns a key's secret, a password or a
//! database URL's password.

mod analytics;
mod api;
mod blobs;
mod client;
mod clock;
mod context;
mod db;
mod error;
pub mod model;
mod seal;
mod server;
mod store;
mod webhooks;

pub use api::{Limits, serve, serve_with};
pub use client::HubClient;
pub use db::Location;
pub use error::HubError;
pub use seal::KEY_FILE;
pub use server::{ServeOptions, run};
pub use store::{CreatedKey, Grant, KeySpec, Store, UserInfo};
pub use webhooks::delivery::Background;
pub use webhooks::signature::{forge_signature, standard_signature_matches};
