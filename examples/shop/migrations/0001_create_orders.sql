-- Applied once, in a transaction, by `gantry migrate run` or a deploy (before
-- any new instance starts); recorded in gantry_migrations with its sha256.
-- Never edit it once applied: write 0002_*.sql instead.
CREATE TABLE orders (
    id BIGSERIAL PRIMARY KEY,
    placed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    total_cents BIGINT NOT NULL
);
