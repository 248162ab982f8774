//! One ACME account on one directory, and the order of one certificate:
//! new order → an HTTP-01 answer per authorization, put in `Challenges` →
//! tell the CA it may look → poll with backoff until ready → finalize with a
//! CSR for a key made here (rcgen, ECDSA P-256) → poll for the chain →
//! store the pair under `acme/certs/<name>/`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, Order,
    OrderStatus, RetryPolicy,
};

use super::challenges::OpenChallenges;
use super::files::{self, SavedAccount};
use super::{AcmeConfig, AcmeError, Challenges, Issued, Problem};
use gantry_file::FileError;

/// How an open order is polled: 250 ms, then doubling, for at most 90 s.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(250))
    .backoff(2.0)
    .timeout(Duration::from_secs(90));

/// An account ready to order, with where its files go. Cheap to share.
#[derive(Clone)]
pub struct Acme {
    inner: Arc<Inner>,
}

struct Inner {
    config: AcmeConfig,
    /// `<state dir>/acme`.
    dir: PathBuf,
    account: Account,
    challenges: Challenges,
}

impl Acme {
    /// The account saved in `state_dir/acme/account.json` for this
    /// directory, or a new one, saved there (0600) before it is used.
    /// Fetches the CA's directory either way.
    pub async fn open(
        config: AcmeConfig,
        state_dir: &Path,
        challenges: Challenges,
    ) -> Result<Acme, AcmeError> {
        config.validate()?;
        let dir = crate::ProxyDir::new(state_dir).acme();
        std::fs::create_dir_all(&dir).map_err(FileError::at("create", &dir))?;
        let unreachable = |e: instant_acme::Error| AcmeError::Unreachable {
            directory: config.directory.clone(),
            message: error_chain(&e),
        };
        let builder = || match &config.ca_root {
            Some(root) => Account::builder_with_root(root).map_err(|e| AcmeError::CaRoot {
                path: root.clone(),
                message: error_chain(&e),
            }),
            None => Account::builder().map_err(unreachable),
        };
        let saved = files::load_account(&dir)?.filter(|saved| saved.directory == config.directory);
        let account = match saved {
            Some(saved) => builder()?
                .from_credentials(saved.credentials)
                .await
                .map_err(unreachable)?,
            None => {
                let contact = config.email.as_ref().map(|e| format!("mailto:{e}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let new = NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                };
                let (account, credentials) = builder()?
                    .create(&new, config.directory.clone(), None)
                    .await
                    .map_err(|e| refused_or(&config, "create an account", "", e))?;
                files::save_account(
                    &dir,
                    &SavedAccount {
                        directory: config.directory.clone(),
                        credentials,
                    },
                )?;
                account
            }
        };
        Ok(Acme {
            inner: Arc::new(Inner {
                config,
                dir,
                account,
                challenges,
            }),
        })
    }

    /// The account's URL at the CA (not a secret).
    pub fn account_id(&self) -> &str {
        self.inner.account.id()
    }

    /// Orders one certificate for `names` (the first names its directory)
    /// over HTTP-01, stores it and returns it. Nothing is stored unless the
    /// whole order succeeded, so a failure leaves the previous pair in place.
    pub async fn issue(&self, names: &[String]) -> Result<Issued, AcmeError> {
        let inner = &self.inner;
        let listed = names.join(", ");
        let Some(first) = names.first() else {
            return Err(AcmeError::Order {
                names: listed,
                message: "no names to order".to_owned(),
            });
        };
        for name in names {
            check_name(name)?;
            files::cert_dir(&inner.dir, name)?;
        }
        let identifiers: Vec<Identifier> =
            names.iter().map(|n| Identifier::Dns(n.clone())).collect();
        let failed = |action, e| refused_or(&inner.config, action, &listed, e);
        let mut order = inner
            .account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| failed("open an order", e))?;

        // Answers stay up until this function returns, whatever happens.
        let mut open = OpenChallenges::new(inner.challenges.clone());
        inner
            .answer_challenges(&mut order, &mut open, &listed)
            .await?;
        let status = order.poll_ready(&POLL).await;
        if !matches!(status, Ok(OrderStatus::Ready)) {
            return Err(inner.not_ready(&mut order, status, &listed).await);
        }

        let (key, csr) = certificate_request(names, &listed)?;
        order
            .finalize_csr(csr.der())
            .await
            .map_err(|e| failed("finalize the order", e))?;
        let chain_pem = order
            .poll_certificate(&POLL)
            .await
            .map_err(|e| failed("issue the certificate", e))?;
        drop(open);

        let issued = Issued::from_pem(chain_pem, key.serialize_pem()).map_err(|message| {
            AcmeError::Order {
                names: listed.clone(),
                message: format!("the CA's certificate is not usable: {message}"),
            }
        })?;
        let dir = inner.dir.clone();
        let (first, stored) = (first.clone(), issued.clone());
        tokio::task::spawn_blocking(move || files::save_cert(&dir, &first, &stored))
            .await
            .map_err(|e| {
                FileError::at("write", &inner.dir)(std::io::Error::other(e.to_string()))
            })??;
        Ok(issued)
    }
}

impl Inner {
    /// Puts up the HTTP-01 answer of each pending authorization of `order`
    /// in `open` and tells the CA it may look.
    async fn answer_challenges(
        &self,
        order: &mut Order,
        open: &mut OpenChallenges,
        listed: &str,
    ) -> Result<(), AcmeError> {
        let failed = |action, e| refused_or(&self.config, action, listed, e);
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization =
                authorization.map_err(|e| failed("show an authorization", e))?;
            let name = authorization.identifier().to_string();
            match authorization.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                status => {
                    return Err(AcmeError::Order {
                        names: listed.to_owned(),
                        message: format!("the authorization for {name} is {status:?}"),
                    });
                }
            }
            let Some(mut challenge) = authorization.challenge(ChallengeType::Http01) else {
                return Err(AcmeError::Name {
                    name,
                    reason: "the CA offers no HTTP-01 challenge for it",
                });
            };
            open.open(
                challenge.token.clone(),
                challenge.key_authorization().as_str().to_owned(),
            );
            challenge
                .set_ready()
                .await
                .map_err(|e| failed("start a challenge", e))?;
        }
        Ok(())
    }

    /// Why `order` did not become ready: the CA's reason on the challenge
    /// that failed, if one did, else the order's status or the error.
    async fn not_ready(
        &self,
        order: &mut Order,
        status: Result<OrderStatus, instant_acme::Error>,
        listed: &str,
    ) -> AcmeError {
        let mut authorizations = order.authorizations();
        while let Some(Ok(mut authorization)) = authorizations.next().await {
            let name = authorization.identifier().to_string();
            let Ok(state) = authorization.refresh().await else {
                continue;
            };
            let problem = state
                .challenges
                .iter()
                .filter(|c| c.r#type == ChallengeType::Http01)
                .find_map(|c| c.error.as_ref());
            if let Some(problem) = problem {
                return AcmeError::Challenge {
                    name,
                    problem: Problem::from_acme(problem),
                };
            }
        }
        match status {
            Ok(status) => AcmeError::Order {
                names: listed.to_owned(),
                message: format!("the order is {status:?} instead of ready"),
            },
            Err(e) => refused_or(&self.config, "validate the order", listed, e),
        }
    }
}

/// A new key (rcgen's default, ECDSA P-256) and the signed request for a
/// certificate naming `names`.
fn certificate_request(
    names: &[String],
    listed: &str,
) -> Result<(rcgen::KeyPair, rcgen::CertificateSigningRequest), AcmeError> {
    let refused = |message| AcmeError::Order {
        names: listed.to_owned(),
        message,
    };
    let key = rcgen::KeyPair::generate().map_err(|e| refused(format!("cannot make a key: {e}")))?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())
        .map_err(|e| refused(format!("cannot make a request: {e}")))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| refused(format!("cannot sign the request: {e}")))?;
    Ok((key, csr))
}

/// HTTP-01 proves control of one DNS name: no wildcard, no IP address.
pub(crate) fn check_name(name: &str) -> Result<(), AcmeError> {
    let reason = if name.starts_with("*.") {
        Some("a wildcard needs the DNS-01 challenge")
    } else if name.starts_with('[') || name.parse::<std::net::IpAddr>().is_ok() {
        Some("an IP address is not a DNS name")
    } else if !name.contains('.') {
        Some("a CA issues only for names with a dot, like app.example.com")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(AcmeError::Name {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// The CA's problem document if it sent one, else a transport failure.
fn refused_or(
    config: &AcmeConfig,
    action: &'static str,
    names: &str,
    error: instant_acme::Error,
) -> AcmeError {
    match error {
        instant_acme::Error::Api(problem) => AcmeError::Refused {
            action,
            names: if names.is_empty() {
                "this account".to_owned()
            } else {
                names.to_owned()
            },
            problem: Problem::from_acme(&problem),
        },
        instant_acme::Error::Timeout(_) => AcmeError::Order {
            names: names.to_owned(),
            message: format!("the ACME server did not {action} in time"),
        },
        other => AcmeError::Unreachable {
            directory: config.directory.clone(),
            message: error_chain(&other),
        },
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}
