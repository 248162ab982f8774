ALTER TABLE api_keys ADD COLUMN allow_from TEXT;
