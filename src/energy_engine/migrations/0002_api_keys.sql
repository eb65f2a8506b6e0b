-- API keys (issue 12). A key is `ee_<id>_<secret>`: `id` is public (it names the key in logs,
-- `keys list` and `keys revoke`), the secret is 256 random bits and is never stored.
--
-- Only the SHA-256 of the whole key is kept. A fast hash is the right one here: a slow,
-- salted password hash (bcrypt, argon2) exists to make guessing a low-entropy secret costly,
-- and nobody can guess 256 random bits however fast the hash is; a fast hash lets every
-- request be checked with one hash and one dict lookup.

CREATE TABLE api_keys (
    id          text        PRIMARY KEY CHECK (id ~ '^[0-9a-f]{12}$'),
    key_sha256  bytea       NOT NULL UNIQUE CHECK (length(key_sha256) = 32),
    name        text        NOT NULL DEFAULT '',
    scopes      text[]      NOT NULL CHECK (
        cardinality(scopes) > 0 AND scopes <@ ARRAY['ingest', 'read', 'metrics', 'admin']
    ),
    -- A device-bound key may write readings of this one device only.
    device_id   text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
