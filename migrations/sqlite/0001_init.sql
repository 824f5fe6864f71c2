-- gatehouse store, SQLite: consumers, API keys, the audit trail and the
-- revision counter. Timestamps are Unix seconds (UTC). JSON is stored as text
-- and checked by the application when read back.

-- One row: the store revision, bumped in the same transaction as every
-- consumer or key change so that other processes notice it.
CREATE TABLE store_meta (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER NOT NULL
) STRICT;

INSERT INTO store_meta (id, revision) VALUES (1, 0);

CREATE TABLE consumers (
    id          TEXT    NOT NULL PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    plan        TEXT,
    metadata    TEXT    NOT NULL DEFAULT '{}',  -- a JSON object
    created_at  INTEGER NOT NULL,
    disabled_at INTEGER
) STRICT;

CREATE INDEX consumers_by_created ON consumers (created_at, id);

CREATE TABLE api_keys (
    id           TEXT    NOT NULL PRIMARY KEY,
    consumer_id  TEXT    NOT NULL REFERENCES consumers (id),
    name         TEXT    NOT NULL,
    scopes       TEXT    NOT NULL DEFAULT '[]', -- a JSON array of strings
    hash         TEXT    NOT NULL,              -- argon2id PHC string, never a secret
    expires_at   INTEGER,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at   INTEGER
) STRICT;

CREATE INDEX api_keys_by_consumer ON api_keys (consumer_id, created_at, id);
CREATE INDEX api_keys_by_created ON api_keys (created_at, id);

CREATE TABLE audit (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    actor   TEXT    NOT NULL,
    client  TEXT,
    action  TEXT    NOT NULL,
    target  TEXT,
    outcome TEXT    NOT NULL
) STRICT;

CREATE INDEX audit_by_at ON audit (at, id);
