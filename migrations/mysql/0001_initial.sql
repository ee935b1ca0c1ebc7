-- mcp-meter schema 1 (MySQL 8 / MariaDB 10.5+): customers, API keys, usage
-- records and the daily usage roll-up. InnoDB, utf8mb4 with binary
-- collation (ids compare case-sensitively and sort in byte order, as on the
-- other backends). Times are Unix milliseconds (BIGINT); an API key is
-- stored only as the SHA-256 hash of its secret. Indexed VARCHARs stay
-- within InnoDB's 3072-byte key limit; the store cuts method names to 128
-- and tool names, session ids and reasons to 255 characters on every backend.

CREATE TABLE customers (
    id                 VARCHAR(64)  NOT NULL PRIMARY KEY,
    name               TEXT         NOT NULL,
    email              TEXT,
    plan_id            VARCHAR(255),
    status             VARCHAR(16)  NOT NULL DEFAULT 'active'
                                    CHECK (status IN ('active', 'suspended')),
    stripe_customer_id VARCHAR(255),
    external_subject   VARCHAR(255) UNIQUE,
    metadata           MEDIUMTEXT   NOT NULL,
    created_at         BIGINT       NOT NULL,
    updated_at         BIGINT       NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE api_keys (
    id           VARCHAR(64)   NOT NULL PRIMARY KEY,
    customer_id  VARCHAR(64)   NOT NULL,
    key_hash     VARBINARY(32) NOT NULL UNIQUE,
    prefix       VARCHAR(64)   NOT NULL,
    name         VARCHAR(255),
    scope        TEXT          NOT NULL,
    expires_at   BIGINT,
    revoked_at   BIGINT,
    last_used_at BIGINT,
    created_at   BIGINT        NOT NULL,
    INDEX api_keys_customer_id (customer_id),
    CONSTRAINT api_keys_customer FOREIGN KEY (customer_id) REFERENCES customers (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE usage_records (
    call_id     VARCHAR(128) NOT NULL PRIMARY KEY,
    customer_id VARCHAR(64),
    key_id      VARCHAR(64),
    session_id  VARCHAR(255),
    method      VARCHAR(128) NOT NULL,
    tool        VARCHAR(255),
    started_at  BIGINT       NOT NULL,
    duration_us BIGINT       NOT NULL,
    bytes_in    BIGINT       NOT NULL,
    bytes_out   BIGINT       NOT NULL,
    outcome     VARCHAR(32)  NOT NULL,
    reason      VARCHAR(255),
    units       BIGINT       NOT NULL,
    INDEX usage_records_customer_started (customer_id, started_at),
    INDEX usage_records_started (started_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- One row per UTC day, customer ('' when anonymous), method and tool (''
-- when none).
CREATE TABLE usage_daily (
    day         VARCHAR(10)  NOT NULL,
    customer_id VARCHAR(64)  NOT NULL DEFAULT '',
    method      VARCHAR(128) NOT NULL,
    tool        VARCHAR(255) NOT NULL DEFAULT '',
    calls       BIGINT       NOT NULL DEFAULT 0,
    errors      BIGINT       NOT NULL DEFAULT 0,
    units       BIGINT       NOT NULL DEFAULT 0,
    duration_us BIGINT       NOT NULL DEFAULT 0,
    bytes_in    BIGINT       NOT NULL DEFAULT 0,
    bytes_out   BIGINT       NOT NULL DEFAULT 0,
    PRIMARY KEY (day, customer_id, method, tool)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
