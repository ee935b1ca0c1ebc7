-- mcp-meter schema 2 (MySQL 8 / MariaDB 10.5+): the ledger. Prepaid
-- balances in whole credits, the append-only ledger of every movement and
-- charge, the state of each logical call's reservation, and per-period
-- counters (priced calls, free quotas). Amounts are integers (credits, or
-- micro-units of a currency for charges); times are Unix milliseconds
-- (BIGINT). InnoDB, utf8mb4 with binary collation. Indexed VARCHARs stay
-- within InnoDB's 3072-byte key limit (4 bytes a character): the store
-- limits charge keys, idempotency keys and counter names to 512 characters
-- on every backend (a derived idempotency key such as
-- `refund:<charge key>:<attempt>` needs a few more, hence 600), and cuts
-- plan ids and tool names to 255 and call ids to 128.

-- One row per customer that was ever given credits.
CREATE TABLE balances (
    customer_id VARCHAR(64) NOT NULL PRIMARY KEY,
    balance     BIGINT      NOT NULL CHECK (balance >= 0),
    updated_at  BIGINT      NOT NULL,
    CONSTRAINT balances_customer FOREIGN KEY (customer_id) REFERENCES customers (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Append-only: one row per movement of a balance or charge on a bill.
-- (customer_id, idempotency_key) makes every write apply once.
CREATE TABLE ledger_entries (
    id              BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    customer_id     VARCHAR(64)  NOT NULL,
    kind            VARCHAR(16)  NOT NULL
                                 CHECK (kind IN ('reservation', 'settlement', 'refund', 'grant',
                                                 'purchase', 'adjustment', 'charge', 'expiry')),
    amount          BIGINT       NOT NULL,
    unit            VARCHAR(16)  NOT NULL,
    balance_after   BIGINT,
    call_id         VARCHAR(128),
    plan_id         VARCHAR(255),
    tool            VARCHAR(255),
    idempotency_key VARCHAR(600) NOT NULL,
    reason          TEXT,
    created_at      BIGINT       NOT NULL,
    UNIQUE KEY ledger_entries_idempotency (customer_id, idempotency_key),
    INDEX ledger_entries_customer_id (customer_id, id),
    CONSTRAINT ledger_entries_customer FOREIGN KEY (customer_id) REFERENCES customers (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- The reservation of each logical call: its latest attempt and where that
-- attempt stands.
CREATE TABLE call_charges (
    customer_id VARCHAR(64)  NOT NULL,
    charge_key  VARCHAR(512) NOT NULL,
    attempt     BIGINT       NOT NULL CHECK (attempt >= 1),
    state       VARCHAR(16)  NOT NULL CHECK (state IN ('reserved', 'settled', 'refunded')),
    amount      BIGINT       NOT NULL CHECK (amount >= 0),
    call_id     VARCHAR(128) NOT NULL,
    plan_id     VARCHAR(255) NOT NULL,
    tool        VARCHAR(255),
    created_at  BIGINT       NOT NULL,
    updated_at  BIGINT       NOT NULL,
    PRIMARY KEY (customer_id, charge_key),
    CONSTRAINT call_charges_customer FOREIGN KEY (customer_id) REFERENCES customers (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- How far a counter went in one period (priced calls, free quotas).
CREATE TABLE period_counters (
    customer_id  VARCHAR(64)  NOT NULL,
    counter      VARCHAR(512) NOT NULL,
    period_start BIGINT       NOT NULL,
    used         BIGINT       NOT NULL CHECK (used >= 0),
    PRIMARY KEY (customer_id, counter, period_start),
    CONSTRAINT period_counters_customer FOREIGN KEY (customer_id) REFERENCES customers (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
