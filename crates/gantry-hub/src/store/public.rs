//! What the hub shows and takes without a login: a product's public
//! roadmap with vote counts, its changelog, ideas submitted from a public
//! form, votes, and a submission's status by its token.
//!
//! Nothing here trusts the visitor: every text is bounded and sanitised
//! (control and invisible characters and HTML tags dropped), a form must
//! come with a token the hub signed at least a few seconds earlier and not
//! hours ago, a field no person sees (a honeypot) must stay empty, and
//! descriptions may hold only a few links. Only public items are shown or
//! take votes; an email is never shown back.

use gantry_core::artifact::hex;
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::items::{Access, Reach};
use super::keys::{digest, random_hex};
use super::{Actor, Store, audit, one_line, products};
use crate::clock;
use crate::db::{DbError, Row, Sql, Value};
use crate::error::HubError;
use crate::model::{Kind, Status, StatusCategory};
use crate::seal::{Purpose, SealKey};

/// Votes one email may have in one product's open items.
pub const VOTES_PER_EMAIL: i64 = 10;
/// A form token is good this long after it was handed out.
const FORM_MAX_AGE_MS: i64 = 2 * 3600 * 1000;
const NAME_MAX: usize = 100;
const EMAIL_MAX: usize = 254;
const TITLE_MAX: usize = 120;
const DESCRIPTION_MIN: usize = 10;
const DESCRIPTION_MAX: usize = 5000;
/// Links a description may hold: spam is mostly links.
const LINKS_MAX: usize = 3;
const LIST_MAX: usize = 100;

/// An item as the public sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PublicItem {
    /// `SHOP-42`.
    pub reference: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub title: String,
    /// Markdown.
    pub description: String,
    pub status: Status,
    pub status_category: StatusCategory,
    pub votes: i64,
    pub target_release: Option<String>,
    pub fixed_version: Option<String>,
    pub updated_at: String,
}

/// `POST /api/public/{product}/ideas`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Idea {
    pub name: String,
    /// Never shown; one vote per email and item.
    pub email: String,
    /// `feature` or `bug`.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// A one-line summary; the description's first line when left out.
    pub title: Option<String>,
    /// Markdown, 10 to 5000 characters, at most 3 links.
    pub description: String,
    /// `GET /api/public/{product}/form`'s token, from the page the form
    /// is on.
    pub form_token: String,
    /// Leave empty: a field the form hides from people.
    #[serde(default)]
    pub website: String,
}

/// A submission received: its token is the only way to its status.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Submitted {
    /// Keep it: `GET /api/public/submissions/{token}` shows the status.
    pub token: String,
    pub reference: String,
}

/// A submission's status.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SubmissionStatus {
    pub reference: String,
    pub title: String,
    pub status: Status,
    pub status_category: StatusCategory,
    pub votes: i64,
    pub submitted_at: String,
    pub updated_at: String,
}

/// A vote counted.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Voted {
    pub reference: String,
    pub votes: i64,
    /// Votes the email has left in this product.
    pub votes_left: i64,
}

/// Drops what has no place in a visitor's text: control characters (but
/// line breaks and tabs), bidirectional overrides and zero-width
/// characters, and HTML tags (markdown needs none, and pages must never
/// render a visitor's markup).
pub fn sanitise(text: &str) -> String {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    // Once no `>` is left, no later `<` opens a tag: searching again for
    // each would take time quadratic in the input (`<a<a<a…`).
    let mut closes = true;
    while let Some(c) = rest.chars().next() {
        let after = &rest[c.len_utf8()..];
        let opens = c == '<'
            && after.starts_with(|n: char| n.is_ascii_alphabetic() || matches!(n, '/' | '!' | '?'));
        let tag_end = (opens && closes).then(|| after.find('>')).flatten();
        closes &= !opens || tag_end.is_some();
        if let Some(end) = tag_end {
            rest = &after[end + 1..];
            continue;
        }
        let invisible = matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}');
        if !invisible && (!c.is_control() || c == '\n' || c == '\t') {
            out.push(c);
        }
        rest = after;
    }
    out.trim().to_owned()
}

/// Checks an email's shape (the hub sends no mail, so no more is known).
pub fn check_email(email: &str) -> Result<(), HubError> {
    one_line("email", email, EMAIL_MAX)?;
    let shaped = email.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains('@')
    }) && !email.contains(char::is_whitespace);
    if shaped {
        Ok(())
    } else {
        Err(HubError::Invalid {
            message: format!("`{}` is not an email address", email.escape_debug()),
            hint: Some("like ann@example.com".to_owned()),
        })
    }
}

fn links(text: &str) -> usize {
    let lower = text.to_lowercase();
    ["http://", "https://", "www."]
        .iter()
        .map(|p| lower.matches(p).count())
        .sum()
}

/// The idea, checked and sanitised: (name, email, title, description).
fn checked(idea: &Idea) -> Result<(String, String, String, String), HubError> {
    if !matches!(idea.kind, Kind::Feature | Kind::Bug) {
        return Err(HubError::invalid("an idea's `type` is `feature` or `bug`"));
    }
    let name = sanitise(&idea.name);
    one_line("name", &name, NAME_MAX)?;
    let email = idea.email.trim().to_lowercase();
    check_email(&email)?;
    let description = sanitise(&idea.description);
    super::bounded("description", &description, DESCRIPTION_MAX)?;
    if description.chars().count() < DESCRIPTION_MIN {
        return Err(HubError::invalid(format!(
            "`description` needs at least {DESCRIPTION_MIN} characters"
        )));
    }
    if links(&description) > LINKS_MAX {
        return Err(HubError::invalid(format!(
            "`description` holds more than {LINKS_MAX} links"
        )));
    }
    let title = match &idea.title {
        Some(title) => sanitise(title),
        None => description
            .lines()
            .next()
            .unwrap_or_default()
            .chars()
            .take(80)
            .collect(),
    };
    one_line("title", &title, TITLE_MAX)?;
    Ok((name, email, title, description))
}

/// The hub's key for signing form tokens, made on first use, kept sealed.
fn form_key(sql: &mut dyn Sql, seal: &SealKey) -> Result<String, HubError> {
    let made = seal.seal(Purpose::Form, &random_hex::<32>())?;
    sql.execute(
        "INSERT INTO hub_secrets (name, value) VALUES ('form', ?) ON CONFLICT DO NOTHING",
        &[made.into()],
    )?;
    let stored = sql
        .query_one("SELECT value FROM hub_secrets WHERE name = 'form'", &[])?
        .ok_or_else(|| HubError::Internal("the form key vanished".to_owned()))?
        .text(0)?;
    seal.open(Purpose::Form, &stored)
}

fn form_mac(key: &str, product: &str, issued: i64) -> Result<hmac::Hmac<sha2::Sha256>, HubError> {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes())
        .map_err(|e| HubError::Internal(format!("hmac: {e}")))?;
    mac.update(format!("form\0{product}\0{issued}").as_bytes());
    Ok(mac)
}

/// Checks a form token: signed by this hub for this product, at least
/// `min_age_ms` old (people take that long to type; scripts do not) and not
/// stale.
fn check_form_token(
    sql: &mut dyn Sql,
    seal: &SealKey,
    product: &str,
    token: &str,
    min_age_ms: i64,
) -> Result<(), &'static str> {
    let (issued, mac) = token.split_once('.').ok_or("malformed form token")?;
    let issued: i64 = issued.parse().map_err(|_| "malformed form token")?;
    let mac: Vec<u8> = (0..mac.len())
        .step_by(2)
        .map(|i| {
            mac.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect::<Option<_>>()
        .ok_or("malformed form token")?;
    let key = form_key(sql, seal).map_err(|_| "no form key")?;
    form_mac(&key, product, issued)
        .map_err(|_| "no form key")?
        .verify_slice(&mac)
        .map_err(|_| "forged form token")?;
    let age = clock::now() - issued;
    if age < min_age_ms {
        return Err("sent too fast");
    }
    if age > FORM_MAX_AGE_MS {
        return Err("stale form token");
    }
    Ok(())
}

fn public_item(product: &str, row: &Row) -> Result<PublicItem, DbError> {
    let kind = row.text(1)?;
    let status = row.text(4)?;
    let status =
        Status::parse(&status).ok_or_else(|| DbError::Shape(format!("status {status}")))?;
    Ok(PublicItem {
        reference: format!("{product}-{}", row.int(0)?),
        kind: Kind::parse(&kind).ok_or_else(|| DbError::Shape(format!("type {kind}")))?,
        title: row.text(2)?,
        description: row.text(3)?,
        status,
        status_category: status.category(),
        votes: row.int(8)?,
        target_release: row.opt_text(5)?,
        fixed_version: row.opt_text(6)?,
        updated_at: clock::format(row.int(7)?),
    })
}

const PUBLIC_COLUMNS: &str = "i.seq, i.kind, i.title, i.description, i.status, i.target_release, \
     i.fixed_version, i.updated_at, (SELECT COUNT(*) FROM votes v WHERE v.item_id = i.id)";

impl Store {
    /// A form token for `product`'s public forms.
    pub fn form_token(&self, product: &str) -> Result<String, HubError> {
        self.tx(|sql| {
            products::id_of(sql, product)?;
            let key = form_key(sql, &self.seal)?;
            let issued = clock::now();
            let mac = form_mac(&key, product, issued)?.finalize().into_bytes();
            Ok(format!("{issued}.{}", hex(&mac)))
        })
    }

    /// The public items still to do, most voted first.
    pub fn roadmap(&self, product: &str) -> Result<Vec<PublicItem>, HubError> {
        self.public_items(product, "('open', 'in_progress')", "9 DESC, i.id")
    }

    /// The public items done or closed, latest first.
    pub fn changelog(&self, product: &str) -> Result<Vec<PublicItem>, HubError> {
        self.public_items(
            product,
            "('done', 'closed')",
            "i.updated_at DESC, i.id DESC",
        )
    }

    fn public_items(
        &self,
        product: &str,
        statuses: &str,
        order: &str,
    ) -> Result<Vec<PublicItem>, HubError> {
        self.tx(|sql| {
            let id = products::id_of(sql, product)?;
            sql.query(
                &format!(
                    "SELECT {PUBLIC_COLUMNS} FROM items i WHERE i.product_id = ? AND i.visibility = 'public' \
                     AND i.status IN {statuses} ORDER BY {order} LIMIT {LIST_MAX}"
                ),
                &[Value::Int(id)],
            )?
            .iter()
            .map(|row| Ok(public_item(product, row)?))
            .collect()
        })
    }

    /// Takes an idea from the public form: checked, sanitised, filed as an
    /// internal, user-submitted item for the team to triage.
    pub fn submit_idea(
        &self,
        product: &str,
        idea: &Idea,
        client: &str,
        min_age_ms: i64,
    ) -> Result<Submitted, HubError> {
        let refused = |why: &'static str| -> Result<Submitted, HubError> {
            self.tx(|sql| {
                audit::record(
                    sql,
                    "public",
                    Some(client),
                    "public.submit",
                    Some(product),
                    why,
                )
            })?;
            Err(HubError::Invalid {
                message: format!("the submission was refused: {why}"),
                hint: Some(
                    "reload the form, fill it in as a person would, and send it again".to_owned(),
                ),
            })
        };
        if !idea.website.is_empty() {
            return refused("a hidden field was filled in");
        }
        let (name, email, title, description) = checked(idea)?;
        let product_id = self.tx(|sql| {
            Ok(
                check_form_token(sql, &self.seal, product, &idea.form_token, min_age_ms)
                    .map(|()| products::id_of(sql, product)),
            )
        })?;
        let product_id = match product_id {
            Ok(id) => id?,
            Err(why) => return refused(why),
        };
        let access = Access {
            actor: Actor {
                name: "public".to_owned(),
                client: Some(client.to_owned()),
            },
            key_id: 0,
            scope: Reach::Products(vec![product_id]),
        };
        // Through JSON, as an agent's POST would come: the one way items
        // are made, with every check it makes.
        let new = serde_json::from_value(serde_json::json!({
            "product": product, "type": idea.kind, "title": title,
            "description": description, "source": "user_submitted",
        }))
        .map_err(|e| HubError::Internal(format!("an idea as an item: {e}")))?;
        let token = random_hex::<32>();
        // The submission is kept in the item's own transaction: an idea is
        // filed with its token or not at all.
        let keep = |sql: &mut dyn Sql, item: &crate::model::Item| -> Result<(), HubError> {
            sql.execute(
                "INSERT INTO submissions (item_id, token_hash, name, email, client, created_at) \
                 VALUES (?, ?, ?, ?, ?, ?)",
                &[
                    Value::Int(item.id),
                    digest(&token).into(),
                    name.as_str().into(),
                    email.as_str().into(),
                    client.into(),
                    Value::Int(clock::now()),
                ],
            )?;
            audit::record(
                sql,
                "public",
                Some(client),
                "public.submit",
                Some(&item.reference),
                "ok",
            )
        };
        let (_, body) = self.file_item(&access, &new, None, b"", &keep)?;
        let item: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| HubError::Internal(e.to_string()))?;
        let reference = item["reference"]
            .as_str()
            .ok_or_else(|| HubError::Internal("a new item without a reference".to_owned()))?
            .to_owned();
        Ok(Submitted { token, reference })
    }

    /// A submission's status, by the token its submitter was given.
    pub fn submission(&self, token: &str) -> Result<SubmissionStatus, HubError> {
        let missing = || HubError::not_found("a submission with that token");
        if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(missing());
        }
        self.tx(|sql| {
            let row = sql
                .query_one(
                    "SELECT p.key, i.seq, i.title, i.status, s.created_at, i.updated_at, \
                     (SELECT COUNT(*) FROM votes v WHERE v.item_id = i.id) \
                     FROM submissions s JOIN items i ON i.id = s.item_id JOIN products p ON p.id = i.product_id \
                     WHERE s.token_hash = ?",
                    &[digest(token).into()],
                )?
                .ok_or_else(missing)?;
            let status = row.text(3)?;
            let status = Status::parse(&status).ok_or_else(|| DbError::Shape(format!("status {status}")))?;
            Ok(SubmissionStatus {
                reference: format!("{}-{}", row.text(0)?, row.int(1)?),
                title: row.text(2)?,
                status,
                status_category: status.category(),
                votes: row.int(6)?,
                submitted_at: clock::format(row.int(4)?),
                updated_at: clock::format(row.int(5)?),
            })
        })
    }

    /// Counts one vote of `email` for a public item: once per item, at
    /// most [`VOTES_PER_EMAIL`] in a product, never on a finished item.
    pub fn vote(
        &self,
        product: &str,
        reference: &str,
        email: &str,
        client: &str,
    ) -> Result<Voted, HubError> {
        let email = email.trim().to_lowercase();
        check_email(&email)?;
        let seq: i64 = reference
            .strip_prefix(product)
            .and_then(|r| r.strip_prefix('-'))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| {
                HubError::not_found(format!("public item `{}`", reference.escape_debug()))
            })?;
        self.tx(|sql| {
            let product_id = products::id_of(sql, product)?;
            let row = sql
                .query_one(
                    "SELECT id, status FROM items WHERE product_id = ? AND seq = ? AND visibility = 'public'",
                    &[Value::Int(product_id), Value::Int(seq)],
                )?
                .ok_or_else(|| HubError::not_found(format!("public item `{reference}`")))?;
            let (item_id, status) = (row.int(0)?, row.text(1)?);
            if Status::parse(&status).is_none_or(|s| s.category().is_finished()) {
                return Err(HubError::Finished { reference: reference.to_owned(), status });
            }
            let used = sql
                .query_one("SELECT COUNT(*) FROM votes WHERE product_id = ? AND email = ?", &[Value::Int(product_id), email.as_str().into()])?
                .map_or(Ok(0), |r| r.int(0))?;
            if used >= VOTES_PER_EMAIL {
                return Err(HubError::Forbidden {
                    message: format!("this email has cast its {VOTES_PER_EMAIL} votes in {product}"),
                });
            }
            let added = sql.execute(
                "INSERT INTO votes (item_id, product_id, email, created_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                &[Value::Int(item_id), Value::Int(product_id), email.as_str().into(), Value::Int(clock::now())],
            )?;
            if added == 0 {
                return Err(HubError::Exists { what: format!("a vote from this email on {reference}") });
            }
            audit::record(sql, "public", Some(client), "public.vote", Some(reference), "ok")?;
            let votes = sql
                .query_one("SELECT COUNT(*) FROM votes WHERE item_id = ?", &[Value::Int(item_id)])?
                .map_or(Ok(0), |r| r.int(0))?;
            Ok(Voted { reference: reference.to_owned(), votes, votes_left: VOTES_PER_EMAIL - used - 1 })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitising_drops_tags_controls_and_invisible_characters() {
        assert_eq!(
            sanitise("Hi <script>alert(1)</script>there\u{202e}\u{7}\r\nnext <b>bold</b> a < b"),
            "Hi alert(1)there\nnext bold a < b"
        );
    }

    /// A `<` with no `>` after it is text; tags before it still go. The
    /// long run is the body a visitor may send: it is read once, not once
    /// for each `<`.
    #[test]
    fn an_unclosed_tag_is_text_and_tags_before_it_still_go() {
        assert_eq!(sanitise("<b>bold</b> <i and <a"), "bold <i and <a");
        assert_eq!(sanitise("<a<a<b>c"), "c", "the first `<a` runs to the `>`");
        let unclosed = "<a".repeat(128 * 1024);
        assert_eq!(sanitise(&unclosed), unclosed);
    }

    #[test]
    fn emails_need_a_local_part_and_a_dotted_domain() {
        assert!(check_email("ann@example.com").is_ok());
        for bad in [
            "ann",
            "ann@localhost",
            "@example.com",
            "ann@.com",
            "a b@example.com",
            "ann@example.com.",
        ] {
            assert!(check_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn links_are_counted_whatever_their_case() {
        assert_eq!(
            links("see HTTPS://a.example and www.b.example or http://c"),
            3
        );
    }
}
