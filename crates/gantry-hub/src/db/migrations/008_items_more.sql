CREATE TABLE reactions (
    comment_id BIGINT NOT NULL REFERENCES comments (id),
    actor TEXT NOT NULL,
    emoji TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (comment_id, actor, emoji)
);

CREATE TABLE watchers (
    item_id BIGINT NOT NULL REFERENCES items (id),
    watcher TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (item_id, watcher)
);

CREATE TABLE notifications (
    id ID_PK,
    recipient TEXT NOT NULL,
    kind TEXT NOT NULL,
    item_id BIGINT NOT NULL REFERENCES items (id),
    comment_id BIGINT,
    actor TEXT NOT NULL,
    summary TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    read_at BIGINT
);
CREATE INDEX notifications_recipient ON notifications (recipient, id);

CREATE TABLE custom_fields (
    id ID_PK,
    product_id BIGINT NOT NULL REFERENCES products (id),
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    options TEXT,
    created_at BIGINT NOT NULL,
    UNIQUE (product_id, name)
);

CREATE TABLE custom_values (
    item_id BIGINT NOT NULL REFERENCES items (id),
    field_id BIGINT NOT NULL REFERENCES custom_fields (id),
    value TEXT NOT NULL,
    PRIMARY KEY (item_id, field_id)
);
CREATE INDEX custom_values_field ON custom_values (field_id, value);

CREATE TABLE attachments (
    id ID_PK,
    item_id BIGINT NOT NULL REFERENCES items (id),
    sha256 TEXT NOT NULL,
    name TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size BIGINT NOT NULL,
    uploader TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX attachments_item ON attachments (item_id, id);
CREATE INDEX attachments_sha256 ON attachments (sha256);

CREATE TABLE saved_views (
    id ID_PK,
    owner TEXT,
    product_id BIGINT REFERENCES products (id),
    name TEXT NOT NULL,
    query TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE INDEX items_priority ON items (priority, id);
CREATE INDEX items_created ON items (created_at, id);
