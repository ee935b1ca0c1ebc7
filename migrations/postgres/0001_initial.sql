-- mcp-meter schema 1 (PostgreSQL): customers, API keys, usage records and
-- the daily usage roll-up. Times are Unix milliseconds (BIGINT); ids are
-- text in the "C" collation (byte order, as on the other backends); an API
-- key is stored only as the SHA-256 hash of its secret.

CREATE TABLE customers (
    id                 TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    name               TEXT   NOT NULL,
    email              TEXT,
    plan_id            TEXT,
    status             TEXT   NOT NULL DEFAULT 'active'
                              CHECK (status IN ('active', 'suspended')),
    stripe_customer_id TEXT,
    external_subject   TEXT   UNIQUE,
    metadata           TEXT   NOT NULL DEFAULT '{}',
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id           TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    customer_id  TEXT COLLATE "C" NOT NULL REFERENCES customers (id),
    key_hash     BYTEA  NOT NULL UNIQUE CHECK (octet_length(key_hash) = 32),
    prefix       TEXT   NOT NULL,
    name         TEXT,
    scope        TEXT   NOT NULL DEFAULT '{}',
    expires_at   BIGINT,
    revoked_at   BIGINT,
    last_used_at BIGINT,
    created_at   BIGINT NOT NULL
);

CREATE INDEX api_keys_customer_id ON api_keys (customer_id);

CREATE TABLE usage_records (
    call_id     TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    customer_id TEXT COLLATE "C",
    key_id      TEXT COLLATE "C",
    session_id  TEXT,
    method      TEXT   NOT NULL,
    tool        TEXT,
    started_at  BIGINT NOT NULL,
    duration_us BIGINT NOT NULL,
    bytes_in    BIGINT NOT NULL,
    bytes_out   BIGINT NOT NULL,
    outcome     TEXT   NOT NULL,
    reason      TEXT,
    units       BIGINT NOT NULL
);

CREATE INDEX usage_records_customer_started ON usage_records (customer_id, started_at);
CREATE INDEX usage_records_started ON usage_records (started_at);

-- One row per UTC day, customer ('' when anonymous), method and tool (''
-- when none).
CREATE TABLE usage_daily (
    day         TEXT COLLATE "C" NOT NULL,
    customer_id TEXT COLLATE "C" NOT NULL DEFAULT '',
    method      TEXT COLLATE "C" NOT NULL,
    tool        TEXT COLLATE "C" NOT NULL DEFAULT '',
    calls       BIGINT NOT NULL DEFAULT 0,
    errors      BIGINT NOT NULL DEFAULT 0,
    units       BIGINT NOT NULL DEFAULT 0,
    duration_us BIGINT NOT NULL DEFAULT 0,
    bytes_in    BIGINT NOT NULL DEFAULT 0,
    bytes_out   BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (day, customer_id, method, tool)
);
