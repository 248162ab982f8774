CREATE TABLE milestones (
    id ID_PK,
    product_id BIGINT NOT NULL REFERENCES products (id),
    name TEXT NOT NULL,
    target_date TEXT,
    created_at BIGINT NOT NULL,
    UNIQUE (product_id, name)
);
ALTER TABLE items ADD COLUMN milestone_id BIGINT REFERENCES milestones (id);
CREATE INDEX items_milestone ON items (milestone_id);
