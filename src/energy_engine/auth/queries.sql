-- API keys (migrations/0002_api_keys.sql). Only the SHA-256 of a key is ever stored or compared.

-- name: insert_key
INSERT INTO api_keys (id, key_sha256, name, scopes, device_id)
VALUES ($1, $2, $3, $4, $5)
RETURNING created_at

-- name: insert_first_key
-- The first admin key of an empty table, once even when several processes start together:
-- the transaction-scoped advisory lock (arbitrary fixed key) orders them, and the later ones
-- find the table no longer empty. Returns no row when there was a key already.
WITH locked AS (
    SELECT pg_advisory_xact_lock(6872316419617283937)
)
INSERT INTO api_keys (id, key_sha256, name, scopes, device_id)
SELECT $1, $2, $3, $4, $5
FROM locked
WHERE NOT EXISTS (SELECT FROM api_keys)
RETURNING created_at

-- name: list_keys
SELECT id, name, scopes, device_id, created_at, revoked_at
FROM api_keys
ORDER BY created_at, id

-- name: revoke_key
-- Revoking twice keeps the first time; returns no row for an unknown id.
UPDATE api_keys
SET revoked_at = coalesce(revoked_at, now())
WHERE id = $1
RETURNING revoked_at

-- name: active_keys
-- What every worker's cache holds: the keys not revoked.
SELECT id, key_sha256, scopes, device_id
FROM api_keys
WHERE revoked_at IS NULL

-- name: active_key
-- One key by hash, for a request whose key the cache does not know (yet).
SELECT id, key_sha256, scopes, device_id
FROM api_keys
WHERE key_sha256 = $1 AND revoked_at IS NULL

-- name: keys_fingerprint
-- Changes whenever a key is created or revoked (keys are never deleted), so that a cache
-- refresh fetches the keys only when they changed: one row instead of every key, every
-- few seconds, on every worker.
SELECT count(*) AS total,
       coalesce(sum(hashtextextended(id || coalesce(revoked_at::text, ''), 0)), 0) AS digest
FROM api_keys
