-- How many times an audit row's event happened: refusals repeated from
-- one client are written once a minute with their count.
ALTER TABLE audit ADD COLUMN count BIGINT NOT NULL DEFAULT 1;
