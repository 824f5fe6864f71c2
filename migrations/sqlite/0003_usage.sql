-- gatehouse store, SQLite: usage per consumer and API key, for support and
-- billing. Each gateway counts in memory and adds its counts here in
-- batches (one transaction per flush), so several gateways on one store add
-- up. Two rollups: per minute (`usage_minute`, `start` a multiple of 60)
-- and per UTC day (`usage_day`, `start` a multiple of 86400), each pruned
-- by its own retention. Not part of the key-store revision: usage is not a
-- consumer or key change. No foreign key: a flush must not fail because a
-- consumer was created on another node a moment ago.

CREATE TABLE usage_minute (
    consumer_id  TEXT    NOT NULL,
    key_id       TEXT    NOT NULL,
    start        INTEGER NOT NULL,
    requests     INTEGER NOT NULL CHECK (requests >= 0),
    status_2xx   INTEGER NOT NULL CHECK (status_2xx >= 0),
    status_3xx   INTEGER NOT NULL CHECK (status_3xx >= 0),
    status_4xx   INTEGER NOT NULL CHECK (status_4xx >= 0),
    status_5xx   INTEGER NOT NULL CHECK (status_5xx >= 0),
    bytes_in     INTEGER NOT NULL CHECK (bytes_in >= 0),
    bytes_out    INTEGER NOT NULL CHECK (bytes_out >= 0),
    rate_limited INTEGER NOT NULL CHECK (rate_limited >= 0),
    PRIMARY KEY (consumer_id, start, key_id)
) STRICT, WITHOUT ROWID;

CREATE INDEX usage_minute_by_start ON usage_minute (start);

CREATE TABLE usage_day (
    consumer_id  TEXT    NOT NULL,
    key_id       TEXT    NOT NULL,
    start        INTEGER NOT NULL,
    requests     INTEGER NOT NULL CHECK (requests >= 0),
    status_2xx   INTEGER NOT NULL CHECK (status_2xx >= 0),
    status_3xx   INTEGER NOT NULL CHECK (status_3xx >= 0),
    status_4xx   INTEGER NOT NULL CHECK (status_4xx >= 0),
    status_5xx   INTEGER NOT NULL CHECK (status_5xx >= 0),
    bytes_in     INTEGER NOT NULL CHECK (bytes_in >= 0),
    bytes_out    INTEGER NOT NULL CHECK (bytes_out >= 0),
    rate_limited INTEGER NOT NULL CHECK (rate_limited >= 0),
    PRIMARY KEY (consumer_id, start, key_id)
) STRICT, WITHOUT ROWID;

CREATE INDEX usage_day_by_start ON usage_day (start);
