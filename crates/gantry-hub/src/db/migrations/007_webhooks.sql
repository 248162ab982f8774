-- Webhooks in: each product's shared secret with its forge, and the last
-- deliveries received (100 a product), kept for replay.
CREATE TABLE forge_secrets (
    product_id BIGINT PRIMARY KEY REFERENCES products (id),
    secret TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE forge_deliveries (
    id ID_PK,
    product_id BIGINT NOT NULL REFERENCES products (id),
    forge TEXT NOT NULL,
    delivery TEXT NOT NULL,
    event TEXT NOT NULL,
    body TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    UNIQUE (product_id, forge, delivery)
);
CREATE INDEX forge_deliveries_product ON forge_deliveries (product_id, id);

-- Webhooks out: subscriptions, the messages owed to them, every attempt.
CREATE TABLE subscriptions (
    id ID_PK,
    product_id BIGINT NOT NULL REFERENCES products (id),
    url TEXT NOT NULL,
    format TEXT NOT NULL,
    events TEXT NOT NULL,
    secret TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    disabled_at BIGINT,
    disabled_reason TEXT
);
CREATE INDEX subscriptions_product ON subscriptions (product_id);

CREATE TABLE outbox (
    id ID_PK,
    subscription_id BIGINT NOT NULL REFERENCES subscriptions (id),
    message_id TEXT NOT NULL,
    event TEXT NOT NULL,
    item_id BIGINT,
    payload TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_at BIGINT,
    state TEXT NOT NULL
);
CREATE INDEX outbox_due ON outbox (state, next_at);

CREATE TABLE outbox_attempts (
    id ID_PK,
    outbox_id BIGINT NOT NULL REFERENCES outbox (id),
    attempt BIGINT NOT NULL,
    at BIGINT NOT NULL,
    status BIGINT,
    error TEXT
);
CREATE INDEX outbox_attempts_message ON outbox_attempts (outbox_id, id);

-- Notices already fired (SLA breaches, stale items), so each fires once.
CREATE TABLE item_notices (
    item_id BIGINT NOT NULL REFERENCES items (id),
    kind TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (item_id, kind)
);
