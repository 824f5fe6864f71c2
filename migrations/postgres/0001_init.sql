-- gatehouse store, Postgres: consumers, API keys, the audit trail and the
-- revision counter. Tables are created unqualified, so they land in the
-- store's schema (the connection's search_path). Timestamps are Unix seconds
-- (UTC). JSON is stored as text and checked by the application when read back.

-- One row: the store revision, bumped (and NOTIFYed) in the same transaction
-- as every consumer or key change. A table rather than a sequence: a
-- sequence is not transactional, so a reader could see a revision before the
-- change it stands for is visible.
CREATE TABLE store_meta (
    id       SMALLINT PRIMARY KEY CHECK (id = 1),
    revision BIGINT   NOT NULL
);

INSERT INTO store_meta (id, revision) VALUES (1, 0);

CREATE TABLE consumers (
    id          TEXT   NOT NULL PRIMARY KEY,
    name        TEXT   NOT NULL UNIQUE,
    plan        TEXT,
    metadata    TEXT   NOT NULL DEFAULT '{}',  -- a JSON object
    created_at  BIGINT NOT NULL,
    disabled_at BIGINT
);

CREATE INDEX consumers_by_created ON consumers (created_at, id);

CREATE TABLE api_keys (
    id           TEXT   NOT NULL PRIMARY KEY,
    consumer_id  TEXT   NOT NULL REFERENCES consumers (id),
    name         TEXT   NOT NULL,
    scopes       TEXT   NOT NULL DEFAULT '[]', -- a JSON array of strings
    hash         TEXT   NOT NULL,              -- argon2id PHC string, never a secret
    expires_at   BIGINT,
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at   BIGINT
);

CREATE INDEX api_keys_by_consumer ON api_keys (consumer_id, created_at, id);
CREATE INDEX api_keys_by_created ON api_keys (created_at, id);

CREATE TABLE audit (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      BIGINT NOT NULL,
    actor   TEXT   NOT NULL,
    client  TEXT,
    action  TEXT   NOT NULL,
    target  TEXT,
    outcome TEXT   NOT NULL
);

CREATE INDEX audit_by_at ON audit (at, id);
