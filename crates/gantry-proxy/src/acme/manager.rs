//! The thread that keeps a certificate for every name the route table gives
//! `tls = "acme"`. At start it loads the stored certificates and reports
//! them; then, on each new set of names and whenever something falls due, it
//! orders what is missing or due, one name at a time.
//!
//! A name whose order fails is retried after a wait that doubles from
//! `retry_first` to `retry_max`; its stored certificate stays in use (and
//! reported) until a new one replaces it. A name just ordered is not ordered
//! again within `MIN_REORDER`, whatever the clock or the margin say, so a
//! short-lived certificate or a wrong setting cannot loop on the CA.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

use super::client::{Acme, check_name};
use super::{AcmeConfig, AcmeError, Challenges, Issued, files};
use crate::table::{RouteTable, Tls};
use gantry_file::FileError;

/// The least time between two orders for one name.
const MIN_REORDER: Duration = Duration::from_secs(3600);
/// The longest the manager sleeps before it looks again.
const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// The most a default margin is: 30 days.
const MAX_MARGIN: Duration = Duration::from_secs(30 * 24 * 3600);

/// What the manager reports, in order, to its `OnIssued` callback.
#[derive(Debug)]
pub enum AcmeEvent<'a> {
    /// A stored certificate, at start: serve it.
    Loaded { name: &'a str, issued: &'a Issued },
    /// A new certificate for `name`: serve it in place of any other.
    Issued {
        name: &'a str,
        issued: &'a Issued,
        renewal: bool,
    },
    /// An order for `name` failed; the next try is after `retry_in`. A
    /// certificate already held for it is kept.
    Failed {
        name: &'a str,
        error: &'a AcmeError,
        retry_in: Duration,
    },
    /// The manager has looked at every wanted name and sleeps until the
    /// next change or due date.
    Settled { names: usize, held: usize },
}

/// Called on the manager's thread for every event; must not block for long.
pub type OnIssued = Arc<dyn Fn(&AcmeEvent<'_>) + Send + Sync>;

/// The names of a table that want an ACME certificate, and why each other
/// name the table marks `acme` cannot have one.
pub fn acme_names(table: &RouteTable) -> (BTreeSet<String>, Vec<AcmeError>) {
    let (mut names, mut refused) = (BTreeSet::new(), Vec::new());
    for route in &table.routes {
        if route.tls != Tls::Acme {
            continue;
        }
        for host in &route.hosts {
            let host = host.to_ascii_lowercase();
            match check_name(&host) {
                Ok(()) => {
                    names.insert(host);
                }
                Err(e) => refused.push(e),
            }
        }
    }
    (names, refused)
}

/// When `issued` falls due: `margin` before it expires, or by default a
/// third of its lifetime before, at most 30 days.
pub fn renew_at(issued: &Issued, margin: Option<Duration>) -> SystemTime {
    let margin = margin.unwrap_or_else(|| {
        let lifetime = issued
            .not_after
            .duration_since(issued.not_before)
            .unwrap_or_default();
        (lifetime / 3).min(MAX_MARGIN)
    });
    issued
        .not_after
        .checked_sub(margin)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Whether `issued` should be renewed at `now`.
pub fn due(issued: &Issued, margin: Option<Duration>, now: SystemTime) -> bool {
    renew_at(issued, margin) <= now
}

/// The running manager. Dropping it stops it: an order in progress is
/// abandoned (its files are only written once it completes).
pub struct AcmeManager {
    names: watch::Sender<BTreeSet<String>>,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl AcmeManager {
    /// Checks the settings, then starts the manager's thread with `names`
    /// wanted. The account is made or loaded there, retried until the CA
    /// answers, so a CA that is down never stops the proxy from starting.
    pub fn start(
        config: AcmeConfig,
        state_dir: &Path,
        challenges: Challenges,
        names: BTreeSet<String>,
        on_event: OnIssued,
    ) -> Result<AcmeManager, AcmeError> {
        config.validate()?;
        let (names, wanted) = watch::channel(names);
        let (stop, stopped) = watch::channel(false);
        let worker = Worker {
            config,
            state_dir: state_dir.to_owned(),
            challenges,
            on_event,
        };
        let thread = std::thread::Builder::new()
            .name("gantry-proxy-acme".to_owned())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(worker.run(wanted, stopped)),
                    Err(e) => crate::log::text(&format!("cannot start the ACME runtime: {e}")),
                }
            })
            .map_err(FileError::at(
                "start a thread for",
                crate::ProxyDir::new(state_dir).acme(),
            ))?;
        Ok(AcmeManager {
            names,
            stop,
            thread: Some(thread),
        })
    }

    /// Replaces the wanted names; the manager orders the new ones at once.
    pub fn want(&self, names: BTreeSet<String>) {
        self.names.send_if_modified(|current| {
            let changed = *current != names;
            *current = names;
            changed
        });
    }

    /// A handle that can change the wanted names from elsewhere.
    pub fn wanted(&self) -> watch::Sender<BTreeSet<String>> {
        self.names.clone()
    }

    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for AcmeManager {
    fn drop(&mut self) {
        self.shut_down();
    }
}

struct Worker {
    config: AcmeConfig,
    state_dir: PathBuf,
    challenges: Challenges,
    on_event: OnIssued,
}

/// A name's failed orders: when to try again, and the wait after that.
struct Retry {
    at: Instant,
    wait: Duration,
}

/// What the manager knows of each name between its looks.
#[derive(Default)]
struct Book {
    /// The certificate served for each name.
    held: HashMap<String, Issued>,
    /// The names whose last order failed.
    retries: HashMap<String, Retry>,
    /// When each name was last ordered.
    ordered: HashMap<String, Instant>,
}

impl Book {
    /// When `name` is to be ordered, if not now: when its certificate
    /// falls due, when `MIN_REORDER` has passed since its last order, or
    /// when its retry is.
    fn not_now(&self, name: &str, margin: Option<Duration>) -> Option<Instant> {
        let now = Instant::now();
        let wall = SystemTime::now();
        if let Some(issued) = self.held.get(name) {
            let at = renew_at(issued, margin);
            if let Ok(left) = at.duration_since(wall) {
                return Some(now + left);
            }
        }
        if let Some(&at) = self.ordered.get(name)
            && now < at + MIN_REORDER
        {
            return Some(at + MIN_REORDER);
        }
        if let Some(retry) = self.retries.get(name)
            && now < retry.at
        {
            return Some(retry.at);
        }
        None
    }
}

impl Worker {
    async fn run(
        self,
        mut wanted: watch::Receiver<BTreeSet<String>>,
        mut stopped: watch::Receiver<bool>,
    ) {
        let mut book = Book {
            held: self.load_stored(),
            ..Book::default()
        };
        let mut acme: Option<Acme> = None;
        let mut names_open = true;
        loop {
            let names = wanted.borrow_and_update().clone();
            let mut wake = Instant::now() + MAX_SLEEP;
            for name in &names {
                if let Some(at) = book.not_now(name, self.config.renew_margin) {
                    wake = wake.min(at);
                    continue;
                }
                let result = tokio::select! {
                    result = self.order(&mut acme, std::slice::from_ref(name)) => result,
                    _ = stopped.wait_for(|stop| *stop) => return,
                };
                if let Some(retry_at) = self.record(&mut book, name, result) {
                    wake = wake.min(retry_at);
                }
            }
            self.emit(AcmeEvent::Settled {
                names: names.len(),
                held: names.iter().filter(|n| book.held.contains_key(*n)).count(),
            });
            tokio::select! {
                changed = wanted.changed(), if names_open => {
                    if changed.is_err() {
                        names_open = false;
                    }
                }
                () = tokio::time::sleep_until(wake) => {}
                _ = stopped.wait_for(|stop| *stop) => return,
            }
        }
    }

    fn emit(&self, event: AcmeEvent<'_>) {
        (self.on_event)(&event);
    }

    /// The stored certificates that have not expired, each reported as
    /// loaded; those that cannot be read are logged and skipped.
    fn load_stored(&self) -> HashMap<String, Issued> {
        let acme_dir = crate::ProxyDir::new(&self.state_dir).acme();
        let (stored, skipped) = files::load_certs(&acme_dir);
        for error in &skipped {
            log_error("acme.certificate_skipped", None, error);
        }
        let now = SystemTime::now();
        let mut held: HashMap<String, Issued> = HashMap::new();
        for (name, issued) in stored {
            if issued.not_after > now {
                self.emit(AcmeEvent::Loaded {
                    name: &name,
                    issued: &issued,
                });
                held.insert(name, issued);
            }
        }
        held
    }

    /// Orders a certificate for `names`, with the account opened (made or
    /// loaded) on the first order.
    async fn order(&self, acme: &mut Option<Acme>, names: &[String]) -> Result<Issued, AcmeError> {
        let account = match acme {
            Some(account) => account.clone(),
            None => {
                let opened = Acme::open(
                    self.config.clone(),
                    &self.state_dir,
                    self.challenges.clone(),
                )
                .await?;
                log_event(serde_json::json!({
                    "event": "acme.account",
                    "directory": self.config.directory,
                    "account": opened.account_id(),
                }));
                *acme = Some(opened.clone());
                opened
            }
        };
        account.issue(names).await
    }

    /// Notes and reports how an order for `name` went; when it failed,
    /// returns when to try again.
    fn record(
        &self,
        book: &mut Book,
        name: &str,
        result: Result<Issued, AcmeError>,
    ) -> Option<Instant> {
        match result {
            Ok(issued) => {
                let renewal = book.held.contains_key(name);
                book.ordered.insert(name.to_owned(), Instant::now());
                book.retries.remove(name);
                log_event(serde_json::json!({
                    "event": "acme.issued",
                    "name": name,
                    "renewal": renewal,
                    "not_after": unix(issued.not_after),
                }));
                self.emit(AcmeEvent::Issued {
                    name,
                    issued: &issued,
                    renewal,
                });
                book.held.insert(name.to_owned(), issued);
                None
            }
            Err(error) => {
                let wait = book.retries.get(name).map_or(self.config.retry_first, |r| {
                    (r.wait * 2).min(self.config.retry_max)
                });
                let at = Instant::now() + wait;
                book.retries.insert(name.to_owned(), Retry { at, wait });
                log_error("acme.failed", Some(name), &error);
                self.emit(AcmeEvent::Failed {
                    name,
                    error: &error,
                    retry_in: wait,
                });
                Some(at)
            }
        }
    }
}

fn unix(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One JSON line in the proxy's log, like its other events.
fn log_event(event: serde_json::Value) {
    crate::log::event(&event);
}

fn log_error(event: &str, name: Option<&str>, error: &AcmeError) {
    log_event(serde_json::json!({
        "event": event,
        "name": name,
        "code": error.code(),
        "message": error.chain(),
        "hint": error.hint(),
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Route;

    fn issued(lifetime_days: u64) -> Issued {
        let not_before = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        Issued {
            names: vec!["a.test".to_owned()],
            chain_pem: String::new(),
            key_pem: String::new(),
            not_before,
            not_after: not_before + Duration::from_secs(lifetime_days * 24 * 3600),
        }
    }

    #[test]
    fn a_90_day_certificate_is_due_30_days_before_it_expires() {
        let cert = issued(90);
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(renew_at(&cert, None), cert.not_after - 30 * day);
        let long = issued(5 * 365);
        assert_eq!(renew_at(&long, None), long.not_after - 30 * day);
        let short = issued(6);
        assert_eq!(renew_at(&short, None), short.not_after - 2 * day);
        assert!(due(&cert, None, cert.not_after - 29 * day));
        assert!(!due(&cert, None, cert.not_after - 31 * day));
    }

    #[test]
    fn only_acme_routes_with_orderable_names_are_wanted() {
        let table = RouteTable {
            routes: vec![
                Route::new("a", vec![])
                    .hosts(["Shop.Example.com", "*.example.com", "localhost"])
                    .tls(Tls::Acme),
                Route::new("b", vec![]).hosts(["plain.example.com"]),
            ],
        };
        let (names, refused) = acme_names(&table);
        assert_eq!(names.into_iter().collect::<Vec<_>>(), ["shop.example.com"]);
        assert_eq!(refused.len(), 2);
        assert!(refused.iter().all(|e| e.code() == "acme.name_unsupported"));
    }
}
