ALTER TABLE items ADD COLUMN estimate BIGINT;
ALTER TABLE items ADD COLUMN due_date TEXT;
ALTER TABLE items ADD COLUMN environment TEXT;
ALTER TABLE items ADD COLUMN affected_version TEXT;
ALTER TABLE items ADD COLUMN fixed_version TEXT;
ALTER TABLE items ADD COLUMN parent_id BIGINT REFERENCES items (id);
CREATE INDEX items_parent ON items (parent_id);
