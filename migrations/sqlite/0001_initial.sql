-- mcp-meter schema 1 (SQLite): customers, API keys, usage records and the
-- daily usage roll-up. Times are Unix milliseconds (INTEGER); ids are text;
-- an API key is stored only as the SHA-256 hash of its secret.

CREATE TABLE customers (
    id                 TEXT    NOT NULL PRIMARY KEY,
    name               TEXT    NOT NULL,
    email              TEXT,
    plan_id            TEXT,
    status             TEXT    NOT NULL DEFAULT 'active'
                               CHECK (status IN ('active', 'suspended')),
    stripe_customer_id TEXT,
    external_subject   TEXT    UNIQUE,
    metadata           TEXT    NOT NULL DEFAULT '{}',
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL
);

CREATE TABLE api_keys (
    id           TEXT    NOT NULL PRIMARY KEY,
    customer_id  TEXT    NOT NULL REFERENCES customers (id),
    key_hash     BLOB    NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    prefix       TEXT    NOT NULL,
    name         TEXT,
    scope        TEXT    NOT NULL DEFAULT '{}',
    expires_at   INTEGER,
    revoked_at   INTEGER,
    last_used_at INTEGER,
    created_at   INTEGER NOT NULL
);

CREATE INDEX api_keys_customer_id ON api_keys (customer_id);

CREATE TABLE usage_records (
    call_id     TEXT    NOT NULL PRIMARY KEY,
    customer_id TEXT,
    key_id      TEXT,
    session_id  TEXT,
    method      TEXT    NOT NULL,
    tool        TEXT,
    started_at  INTEGER NOT NULL,
    duration_us INTEGER NOT NULL,
    bytes_in    INTEGER NOT NULL,
    bytes_out   INTEGER NOT NULL,
    outcome     TEXT    NOT NULL,
    reason      TEXT,
    units       INTEGER NOT NULL
);

CREATE INDEX usage_records_customer_started ON usage_records (customer_id, started_at);
CREATE INDEX usage_records_started ON usage_records (started_at);

-- One row per UTC day, customer ('' when anonymous), method and tool (''
-- when none).
CREATE TABLE usage_daily (
    day         TEXT    NOT NULL,
    customer_id TEXT    NOT NULL DEFAULT '',
    method      TEXT    NOT NULL,
    tool        TEXT    NOT NULL DEFAULT '',
    calls       INTEGER NOT NULL DEFAULT 0,
    errors      INTEGER NOT NULL DEFAULT 0,
    units       INTEGER NOT NULL DEFAULT 0,
    duration_us INTEGER NOT NULL DEFAULT 0,
    bytes_in    INTEGER NOT NULL DEFAULT 0,
    bytes_out   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, customer_id, method, tool)
) WITHOUT ROWID;
