CREATE TABLE products (
    id ID_PK,
    key TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    next_seq BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

CREATE TABLE users (
    id ID_PK,
    name TEXT NOT NULL UNIQUE,
    email TEXT,
    password_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id ID_PK,
    public_id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    permission TEXT NOT NULL,
    product_id BIGINT REFERENCES products (id),
    secret_hash TEXT NOT NULL,
    rate_per_minute BIGINT,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT,
    request_count BIGINT NOT NULL DEFAULT 0,
    revoked_at BIGINT
);

CREATE TABLE items (
    id ID_PK,
    product_id BIGINT NOT NULL REFERENCES products (id),
    seq BIGINT NOT NULL,
    kind TEXT NOT NULL,
    title TEXT NOT NULL,
    description TEXT NOT NULL,
    status TEXT NOT NULL,
    priority TEXT NOT NULL,
    visibility TEXT NOT NULL,
    source TEXT NOT NULL,
    assignee TEXT,
    reporter TEXT NOT NULL,
    target_release TEXT,
    steps TEXT,
    expected TEXT,
    actual TEXT,
    claimed_by TEXT,
    claim_expires_at BIGINT,
    version BIGINT NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (product_id, seq)
);
CREATE INDEX items_updated ON items (updated_at, id);
CREATE INDEX items_status ON items (product_id, status);

CREATE TABLE labels (
    id ID_PK,
    product_id BIGINT NOT NULL REFERENCES products (id),
    name TEXT NOT NULL,
    color TEXT NOT NULL,
    UNIQUE (product_id, name)
);

CREATE TABLE item_labels (
    item_id BIGINT NOT NULL REFERENCES items (id),
    label_id BIGINT NOT NULL REFERENCES labels (id),
    PRIMARY KEY (item_id, label_id)
);

CREATE TABLE checklist (
    id ID_PK,
    item_id BIGINT NOT NULL REFERENCES items (id),
    position BIGINT NOT NULL,
    text TEXT NOT NULL,
    done BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX checklist_item ON checklist (item_id, position);

CREATE TABLE comments (
    id ID_PK,
    item_id BIGINT NOT NULL REFERENCES items (id),
    author TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    edited_at BIGINT,
    deleted_at BIGINT
);
CREATE INDEX comments_item ON comments (item_id, id);

CREATE TABLE links (
    id ID_PK,
    item_id BIGINT NOT NULL REFERENCES items (id),
    kind TEXT NOT NULL,
    target_id BIGINT NOT NULL REFERENCES items (id),
    UNIQUE (item_id, kind, target_id)
);

CREATE TABLE pull_requests (
    id ID_PK,
    item_id BIGINT NOT NULL REFERENCES items (id),
    url TEXT NOT NULL,
    number BIGINT,
    title TEXT,
    status TEXT NOT NULL,
    branch TEXT,
    commit_sha TEXT,
    updated_at BIGINT NOT NULL,
    UNIQUE (item_id, url)
);

CREATE TABLE activity (
    id ID_PK,
    item_id BIGINT NOT NULL REFERENCES items (id),
    actor TEXT NOT NULL,
    at BIGINT NOT NULL,
    field TEXT NOT NULL,
    before TEXT,
    after TEXT,
    note TEXT
);
CREATE INDEX activity_item ON activity (item_id, id);

CREATE TABLE audit (
    id ID_PK,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    outcome TEXT NOT NULL,
    client TEXT
);

CREATE TABLE idempotency (
    key_id BIGINT NOT NULL,
    idem_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status BIGINT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (key_id, idem_key)
);
