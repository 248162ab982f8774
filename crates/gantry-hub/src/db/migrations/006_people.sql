ALTER TABLE users ADD COLUMN totp_secret TEXT;
ALTER TABLE users ADD COLUMN totp_pending TEXT;
ALTER TABLE users ADD COLUMN totp_last_step BIGINT;

CREATE TABLE user_roles (
    id ID_PK,
    user_id BIGINT NOT NULL REFERENCES users (id),
    product_id BIGINT REFERENCES products (id),
    role TEXT NOT NULL
);
CREATE INDEX user_roles_user ON user_roles (user_id);

CREATE TABLE recovery_codes (
    id ID_PK,
    user_id BIGINT NOT NULL REFERENCES users (id),
    code_hash TEXT NOT NULL,
    used_at BIGINT
);
CREATE INDEX recovery_codes_user ON recovery_codes (user_id);

CREATE TABLE sessions (
    id ID_PK,
    user_id BIGINT NOT NULL REFERENCES users (id),
    token_hash TEXT NOT NULL UNIQUE,
    client TEXT,
    created_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE hub_secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE submissions (
    id ID_PK,
    item_id BIGINT NOT NULL REFERENCES items (id),
    token_hash TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    email TEXT NOT NULL,
    client TEXT,
    created_at BIGINT NOT NULL
);

CREATE TABLE votes (
    item_id BIGINT NOT NULL REFERENCES items (id),
    product_id BIGINT NOT NULL REFERENCES products (id),
    email TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (item_id, email)
);
CREATE INDEX votes_email ON votes (product_id, email);
