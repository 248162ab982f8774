//! What the tracker holds, as the API shows it: items and their parts,
//! products, keys. The enums are stored by their `as_str` names.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Defines a closed set of names: serde, the OpenAPI schema, and the text
/// form stored in the database, from one list.
macro_rules! names {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($variant,)*
        }

        impl $name {
            pub const ALL: &[$name] = &[$($name::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }

            pub fn parse(text: &str) -> Option<$name> {
                $name::ALL.iter().copied().find(|v| v.as_str() == text)
            }

            /// The accepted names, for error messages.
            pub fn names() -> String {
                $name::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

names!(
    /// What kind of work an item is.
    Kind { Bug = "bug", Feature = "feature", Task = "task" }
);

names!(
    /// Where an item is in its life.
    Status {
        Open = "open",
        InProgress = "in_progress",
        Done = "done",
        Closed = "closed",
        WontFix = "wont_fix",
    }
);

names!(
    /// The category of a status, as Linear and Plane group theirs, so that a
    /// status maps to any other tracker's without loss.
    StatusCategory {
        Unstarted = "unstarted",
        Started = "started",
        Completed = "completed",
        Canceled = "canceled",
    }
);

impl StatusCategory {
    /// Done with, one way or the other: such an item cannot be claimed.
    pub fn is_finished(self) -> bool {
        matches!(self, StatusCategory::Completed | StatusCategory::Canceled)
    }
}

impl Status {
    pub fn category(self) -> StatusCategory {
        match self {
            Status::Open => StatusCategory::Unstarted,
            Status::InProgress => StatusCategory::Started,
            Status::Done | Status::Closed => StatusCategory::Completed,
            Status::WontFix => StatusCategory::Canceled,
        }
    }
}

names!(
    Priority { Critical = "critical", High = "high", Medium = "medium", Low = "low" }
);

names!(
    /// Who may see an item: the team, or also the public roadmap.
    Visibility { Internal = "internal", Public = "public" }
);

names!(
    /// How an item came to be.
    Source { Internal = "internal", UserSubmitted = "user_submitted", AutoDetected = "auto_detected" }
);

names!(
    /// What an API key is for.
    Role { Agent = "agent", Ci = "ci", Webhook = "webhook" }
);

names!(
    /// What an API key may do; each includes the ones before it.
    Permission { Read = "read", Write = "write", Admin = "admin" }
);

names!(
    /// What a user may do in a product: read it (viewer), work its items
    /// (member), or everything an admin key may (admin).
    UserRole { Viewer = "viewer", Member = "member", Admin = "admin" }
);

impl UserRole {
    /// The key permission the role amounts to.
    pub fn permission(self) -> Permission {
        match self {
            UserRole::Viewer => Permission::Read,
            UserRole::Member => Permission::Write,
            UserRole::Admin => Permission::Admin,
        }
    }
}

names!(
    /// How two items relate, seen from the first.
    LinkKind {
        Blocks = "blocks",
        BlockedBy = "blocked_by",
        RelatesTo = "relates_to",
        DuplicateOf = "duplicate_of",
        DuplicatedBy = "duplicated_by",
    }
);

names!(
    PrStatus { Draft = "draft", Open = "open", Merged = "merged", Closed = "closed" }
);

impl LinkKind {
    /// The same link seen from the other item.
    pub fn inverse(self) -> LinkKind {
        match self {
            LinkKind::Blocks => LinkKind::BlockedBy,
            LinkKind::BlockedBy => LinkKind::Blocks,
            LinkKind::RelatesTo => LinkKind::RelatesTo,
            LinkKind::DuplicateOf => LinkKind::DuplicatedBy,
            LinkKind::DuplicatedBy => LinkKind::DuplicateOf,
        }
    }
}

impl Permission {
    pub fn allows(self, needed: Permission) -> bool {
        let rank = |p: Permission| match p {
            Permission::Read => 0,
            Permission::Write => 1,
            Permission::Admin => 2,
        };
        rank(self) >= rank(needed)
    }
}

/// A label on an item, with the colour it shows in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Label {
    pub name: String,
    /// `#rrggbb`.
    pub color: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChecklistEntry {
    pub id: i64,
    pub text: String,
    pub done: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PullRequest {
    pub url: String,
    pub number: Option<i64>,
    pub title: Option<String>,
    pub status: PrStatus,
    pub branch: Option<String>,
    pub commit: Option<String>,
    pub updated_at: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Link {
    pub kind: LinkKind,
    /// The other item, as `SHOP-42`.
    pub target: String,
}

/// Who holds an item, and until when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Claim {
    pub holder: String,
    pub expires_at: String,
}

/// The fields only bugs have.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BugFields {
    pub steps_to_reproduce: Option<String>,
    pub expected: Option<String>,
    pub actual: Option<String>,
}

/// A unit of work.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Item {
    /// The hub-wide number, used in paths (`/api/agent/items/17`).
    pub id: i64,
    /// The product's key and the item's number in it: `SHOP-42`.
    pub reference: String,
    pub product: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub title: String,
    /// Markdown.
    pub description: String,
    pub status: Status,
    pub status_category: StatusCategory,
    pub priority: Priority,
    pub visibility: Visibility,
    pub source: Source,
    pub assignee: Option<String>,
    pub reporter: String,
    pub target_release: Option<String>,
    pub labels: Vec<Label>,
    pub checklist: Vec<ChecklistEntry>,
    pub bug: Option<BugFields>,
    pub links: Vec<Link>,
    pub pull_requests: Vec<PullRequest>,
    /// Story points or hours, as the team counts.
    pub estimate: Option<i64>,
    /// `YYYY-MM-DD`.
    pub due_date: Option<String>,
    /// Where a bug shows: `prod`, `staging`, ...
    pub environment: Option<String>,
    pub affected_version: Option<String>,
    pub fixed_version: Option<String>,
    pub milestone: Option<Milestone>,
    /// The item this one is a sub-task of, as `SHOP-7`.
    pub parent: Option<String>,
    /// This item's sub-tasks, and how many of them are finished.
    pub subtasks: Progress,
    /// The values of the product's custom fields this item has: text,
    /// date and select as strings, number as a number.
    #[schema(value_type = Object)]
    pub custom: std::collections::BTreeMap<String, serde_json::Value>,
    /// Set while an agent holds the item; an expired claim is `null`.
    pub claim: Option<Claim>,
    /// The branch an agent should work on; a pull request from it links here.
    pub branch: String,
    /// Bumped by every change; the ETag is `"<version>"`.
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

/// Sub-tasks rolled up: finished counts done, closed and won't fix.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Progress {
    pub total: i64,
    pub finished: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Comment {
    pub id: i64,
    pub author: String,
    /// Markdown; `@name` mentions a key or user, who is notified.
    pub body: String,
    pub created_at: String,
    /// Set once its author edited it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<String>,
    /// The reactions given, one entry per emoji that has any, in the
    /// order of the emoji set (GitHub's).
    #[serde(default)]
    pub reactions: Vec<Reaction>,
}

names!(
    /// The reactions a comment can get (GitHub's set); one of each per actor.
    Emoji {
        PlusOne = "plus_one",
        MinusOne = "minus_one",
        Laugh = "laugh",
        Hooray = "hooray",
        Confused = "confused",
        Heart = "heart",
        Rocket = "rocket",
        Eyes = "eyes",
    }
);

/// One emoji on a comment, and who gave it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Reaction {
    pub emoji: Emoji,
    pub count: i64,
    pub actors: Vec<String>,
}

names!(
    /// Why a notification was sent: a comment named the recipient
    /// (`@name`), commented on an item they watch, or a field of an item
    /// they watch changed.
    NotificationKind { Mention = "mention", Comment = "comment", Change = "change" }
);

/// Something a key or user should see.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Notification {
    pub id: i64,
    pub kind: NotificationKind,
    /// The item, as `SHOP-42`.
    pub item: String,
    /// The comment, for mentions and comments.
    pub comment: Option<i64>,
    /// Who caused it.
    pub actor: String,
    /// One line: what happened.
    pub summary: String,
    pub created_at: String,
    pub read: bool,
}

names!(
    /// What a list is ordered by: last change (the default), creation, or
    /// priority (critical first).
    SortKey { Updated = "updated", Created = "created", Priority = "priority" }
);

names!(
    /// What a custom field holds.
    FieldType { Text = "text", Number = "number", Date = "date", Select = "select" }
);

/// A field a product defines for its items.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CustomField {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: FieldType,
    /// The choices of a `select` field; empty for the others.
    pub options: Vec<String>,
}

/// A file attached to an item, stored once by its SHA-256.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Attachment {
    pub id: i64,
    /// The item, as `SHOP-42`.
    pub item: String,
    pub name: String,
    pub content_type: String,
    /// Bytes.
    pub size: i64,
    /// Hex; equal files share it (and their storage).
    pub sha256: String,
    pub uploader: String,
    pub created_at: String,
}

/// One field change of an item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Activity {
    pub actor: String,
    pub at: String,
    pub field: String,
    pub before: Option<String>,
    pub after: Option<String>,
    /// Why, when the change said (a status change's reason and evidence).
    pub note: Option<String>,
}

/// An API key as listed: never its secret, which only creation shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyInfo {
    /// The public part of the key (`ghk_<id>_...`).
    pub id: String,
    pub name: String,
    pub role: Role,
    pub permission: Permission,
    /// The one product the key reaches; `null`: every product.
    pub product: Option<String>,
    pub created_at: String,
    pub last_used_at: Option<String>,
    pub request_count: i64,
    pub revoked: bool,
    /// The networks the key may be used from; empty: anywhere.
    pub allow_from: Vec<String>,
}

/// A product's milestone, which items aim at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Milestone {
    pub name: String,
    /// `YYYY-MM-DD`.
    pub target_date: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Product {
    pub key: String,
    pub name: String,
}

/// One row of the audit log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: String,
    /// A key's name, `cli`, or `anonymous` for a refused key.
    pub actor: String,
    /// `item.create`, `item.claim`, `auth.key`, `key.revoke`, ...
    pub action: String,
    /// An item's reference, a key's id or name.
    pub target: Option<String>,
    /// `ok`, or why an authentication was refused.
    pub outcome: String,
    pub client: Option<String>,
    /// How many times it happened: 1, but for refusals anyone can repeat
    /// (refused keys and sessions, forged webhooks), written at most once
    /// a minute per kind and client with the number refused since the row
    /// before.
    pub count: i64,
}
