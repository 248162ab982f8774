//! The hub's operations on its database, written once over [`Sql`] for
//! both backends. Every operation is one transaction; every mutation
//! writes its activity and audit rows in the same transaction.
//! Blocking: the HTTP layer calls these on tokio's blocking pool.

mod analytics;
mod attachments;
mod audit;
mod bulk;
mod comments;
mod custom;
mod extras;
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
mod views;
mod watch;
mod work;

use std::path::{Path, PathBuf};

use crate::blobs::BlobDir;
use crate::db::{Backend, DbError, Location, Sql};
use crate::error::HubError;
use crate::seal::SealKey;

pub use attachments::{ATTACHMENT_MAX, check_file_name, content_type};
pub use audit::{Actor, client_network};
pub use bulk::BulkChange;
pub use custom::{NewField, filter_value as custom_filter};
pub use fields::{ItemEdit, NewItem};
pub use forge::{Delivery, Incoming, Received};
pub use items::{Access, CLAIM_DEFAULT_SECONDS, PAGE_MAX, Reach};
pub use keys::{Authenticated, CreatedKey, KeySpec};
pub use links::LinkChange;
pub use list::{ItemFilter, ItemPage, Sort};
pub use outbox::{Attempt, Due, NewSubscription, Outcome, Subscription};
pub use public::{Idea, PublicItem, SubmissionStatus, Submitted, Voted};
pub use sessions::{LoginAttempt, SESSION_LIFETIME_MS, SessionUser, csrf_token};
pub use ship::{Shipped, ShippedItems};
pub use users::{Grant, UserInfo};
pub use views::{NewView, SavedView, ViewQuery};
pub use work::{ChecklistChange, NewPr, StatusChange};

pub struct Store {
    backend: Box<dyn Backend>,
    /// Where attachments' contents live; `None`: attachments refused.
    blobs: Option<BlobDir>,
    /// The forge secrets, checked without a transaction.
    forge_keys: forge::ForgeKeys,
    /// Refusals counted for the audit log.
    refusals: audit::Refusals,
    /// Seals the secrets kept in the database.
    seal: SealKey,
}

impl Store {
    /// Opens the SQLite database at `location`, migrating its schema; its
    /// directory is the hub's state directory (see [`Store::open_in`]). A
    /// PostgreSQL database needs [`Store::open_in`].
    pub fn open(location: &Location) -> Result<Store, HubError> {
        match location {
            Location::Sqlite(path) => {
                let dir = path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                Store::open_in(location, dir)
            }
            Location::Postgres(_) => Err(HubError::Invalid {
                message: "a hub on PostgreSQL needs a state directory on this machine, for its \
                          key file and attachments"
                    .to_owned(),
                hint: Some("open it with Store::open_in".to_owned()),
            }),
        }
    }

    /// Opens the database at `location`, migrating its schema, with the
    /// hub's state directory `dir`: the key that seals the secrets kept in
    /// the database (`secrets.key`, made on first start) and attachments'
    /// contents (`attachments/`) live there, never in the database.
    pub fn open_in(location: &Location, dir: &Path) -> Result<Store, HubError> {
        let seal = SealKey::load_or_create(dir)?;
        Ok(Store {
            backend: location.open(&seal)?,
            blobs: Some(BlobDir::new(dir.join("attachments"))),
            forge_keys: forge::ForgeKeys::default(),
            refusals: audit::Refusals::default(),
            seal,
        })
    }

    /// Keeps attachments' contents in `dir`.
    pub fn with_attachments(mut self, dir: PathBuf) -> Store {
        self.blobs = Some(BlobDir::new(dir));
        self
    }

    /// Where attachments live, if anywhere.
    pub fn blobs(&self) -> Result<&BlobDir, HubError> {
        self.blobs.as_ref().ok_or_else(|| HubError::Unsupported {
            what: "attachments without an attachments directory".to_owned(),
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
