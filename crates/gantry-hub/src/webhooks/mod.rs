//! Webhooks: reading forges' payloads (`forge`), checking and making
//! signatures (`signature`), where outbound webhooks may go (`target`),
//! and the background worker that delivers them (`delivery`). What they
//! do to items lives in `store` (`forge`, `outbox`), once.

pub mod delivery;
pub mod forge;
pub mod signature;
pub mod target;
