//! The hub's operations on its database, written once over [`Sql`] for
//! both backends. Every operation is one transaction; every mutation
//! writes its activity and audit rows in the same transaction.
//! Blocking: the HTTP layer calls these on tokio's blocking pool.

mod analytics;
mod audit;
mod fields;
mod forge;
mod items;
mod keys;
mod links;
mod list;
mod outbox;
mod products;
mod public;
mod sessions;
mod ship;
mod users;
mod work;

use crate::db::{Backend, DbError, Location, Sql};
use crate::error::HubError;

pub use audit::Actor;
pub use fields::{ItemEdit, NewItem};
pub use forge::{Delivery, Incoming, Received};
pub use items::{Access, CLAIM_DEFAULT_SECONDS, PAGE_MAX, Reach};
pub use keys::{Authenticated, CreatedKey, KeySpec};
pub use links::LinkChange;
pub use list::{ItemFilter, ItemPage};
pub use outbox::{Attempt, Due, NewSubscription, Outcome, Subscription};
pub use public::{Idea, PublicItem, SubmissionStatus, Submitted, Voted};
pub use sessions::{LoginAttempt, SESSION_LIFETIME_MS, SessionUser, csrf_token};
pub use ship::{Shipped, ShippedItems};
pub use users::{Grant, UserInfo};
pub use work::{ChecklistChange, NewPr, StatusChange};

pub struct Store {
    backend: Box<dyn Backend>,
}

impl Store {
    /// Opens the database at `location`, migrating its schema.
    pub fn open(location: &Location) -> Result<Store, HubError> {
        Ok(Store {
            backend: location.open()?,
        })
    }

    pub fn dialect(&self) -> crate::db::Dialect {
        self.backend.dialect()
    }

    /// Whether the database answers (`/healthz`).
    pub fn ping(&self) -> Result<(), HubError> {
        self.tx(|sql| sql.query("SELECT 1", &[]).map(drop).map_err(Into::into))
    }

    /// Runs `work` in one transaction, which is committed only when it
    /// returns `Ok`.
    pub fn tx<R>(
        &self,
        mut work: impl FnMut(&mut dyn Sql) -> Result<R, HubError>,
    ) -> Result<R, HubError> {
        let mut value = None;
        let mut refused = None;
        let outcome = self.backend.transaction(&mut |sql| match work(sql) {
            Ok(v) => {
                value = Some(v);
                Ok(())
            }
            Err(HubError::Db(e)) => Err(e),
            Err(other) => {
                refused = Some(other);
                Err(DbError::Rollback)
            }
        });
        match (outcome, refused, value) {
            (_, Some(refused), _) => Err(refused),
            (Err(e), None, _) => Err(e.into()),
            (Ok(()), None, Some(v)) => Ok(v),
            (Ok(()), None, None) => Err(HubError::Internal(
                "a transaction committed without a result".to_owned(),
            )),
        }
    }
}

/// Checks a text field's length, in characters.
pub fn bounded(field: &str, text: &str, max: usize) -> Result<(), HubError> {
    let len = text.chars().count();
    if len > max {
        return Err(HubError::Invalid {
            message: format!("`{field}` is {len} characters long; at most {max} are allowed"),
            hint: None,
        });
    }
    if text.contains('\0') {
        return Err(HubError::invalid(format!(
            "`{field}` holds a NUL character"
        )));
    }
    Ok(())
}

/// Checks a one-line text field: not empty, bounded, no control characters.
pub fn one_line(field: &str, text: &str, max: usize) -> Result<(), HubError> {
    bounded(field, text, max)?;
    if text.trim().is_empty() {
        return Err(HubError::invalid(format!("`{field}` is empty")));
    }
    if text.chars().any(char::is_control) {
        return Err(HubError::invalid(format!(
            "`{field}` holds a control character (a line break?); it must be one line"
        )));
    }
    Ok(())
}
