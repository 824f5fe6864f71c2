-- gatehouse store, Postgres: request quotas. How many requests each quota
-- key (a policy and a consumer, e.g. `api-monthly:c_123`) used in each
-- calendar period (`2026-12` for a month, `2026-12-02` for a day, UTC). The
-- gateway counts in memory and adds its deltas here in batches; it reads a
-- row only the first time it sees a key in a period. Not part of the
-- key-store revision (no NOTIFY): writing usage is not a consumer or key
-- change.

CREATE TABLE quota_usage (
    key    TEXT   NOT NULL,
    period TEXT   NOT NULL,
    used   BIGINT NOT NULL CHECK (used >= 0),
    PRIMARY KEY (key, period)
);
