-- Secrets sealed at rest: the TOTP secrets (users.totp_secret,
-- users.totp_pending), the outbound webhooks' signing secrets
-- (subscriptions.secret) and the forges' secrets (forge_secrets.secret)
-- are rewritten as `sealed1:...` under the key file in the hub's state
-- directory, by `seal_secrets` in migrations.rs, in this migration's
-- transaction. Ended sessions are pruned by their ends:
CREATE INDEX sessions_expires ON sessions (expires_at);
