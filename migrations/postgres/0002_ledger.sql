-- mcp-meter schema 2 (PostgreSQL): the ledger. Prepaid balances in whole
-- credits, the append-only ledger of every movement and charge, the state
-- of each logical call's reservation, and per-period counters (priced
-- calls, free quotas). Amounts are integers (credits, or micro-units of a
-- currency for charges); times are Unix milliseconds (BIGINT); keys are
-- text in the "C" collation. The store limits charge keys, idempotency
-- keys and counter names to 512 characters on every backend.

-- One row per customer that was ever given credits.
CREATE TABLE balances (
    customer_id TEXT COLLATE "C" NOT NULL PRIMARY KEY REFERENCES customers (id),
    balance     BIGINT NOT NULL CHECK (balance >= 0),
    updated_at  BIGINT NOT NULL
);

-- Append-only: one row per movement of a balance or charge on a bill.
-- (customer_id, idempotency_key) makes every write apply once.
CREATE TABLE ledger_entries (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id     TEXT COLLATE "C" NOT NULL REFERENCES customers (id),
    kind            TEXT   NOT NULL
                           CHECK (kind IN ('reservation', 'settlement', 'refund', 'grant',
                                           'purchase', 'adjustment', 'charge', 'expiry')),
    amount          BIGINT NOT NULL,
    unit            TEXT   NOT NULL,
    balance_after   BIGINT,
    call_id         TEXT COLLATE "C",
    plan_id         TEXT,
    tool            TEXT,
    idempotency_key TEXT COLLATE "C" NOT NULL,
    reason          TEXT,
    created_at      BIGINT NOT NULL,
    UNIQUE (customer_id, idempotency_key)
);

CREATE INDEX ledger_entries_customer_id ON ledger_entries (customer_id, id);

-- The reservation of each logical call: its latest attempt and where that
-- attempt stands.
CREATE TABLE call_charges (
    customer_id TEXT COLLATE "C" NOT NULL REFERENCES customers (id),
    charge_key  TEXT COLLATE "C" NOT NULL,
    attempt     BIGINT NOT NULL CHECK (attempt >= 1),
    state       TEXT   NOT NULL CHECK (state IN ('reserved', 'settled', 'refunded')),
    amount      BIGINT NOT NULL CHECK (amount >= 0),
    call_id     TEXT COLLATE "C" NOT NULL,
    plan_id     TEXT   NOT NULL,
    tool        TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (customer_id, charge_key)
);

-- How far a counter went in one period (priced calls, free quotas).
CREATE TABLE period_counters (
    customer_id  TEXT COLLATE "C" NOT NULL REFERENCES customers (id),
    counter      TEXT COLLATE "C" NOT NULL,
    period_start BIGINT NOT NULL,
    used         BIGINT NOT NULL CHECK (used >= 0),
    PRIMARY KEY (customer_id, counter, period_start)
);
