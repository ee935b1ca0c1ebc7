-- mcp-meter schema 2 (SQLite): the ledger. Prepaid balances in whole
-- credits, the append-only ledger of every movement and charge, the state
-- of each logical call's reservation, and per-period counters (priced
-- calls, free quotas). Amounts are integers (credits, or micro-units of a
-- currency for charges); times are Unix milliseconds. The store limits
-- charge keys, idempotency keys and counter names to 512 characters on
-- every backend.

-- One row per customer that was ever given credits.
CREATE TABLE balances (
    customer_id TEXT    NOT NULL PRIMARY KEY REFERENCES customers (id),
    balance     INTEGER NOT NULL CHECK (balance >= 0),
    updated_at  INTEGER NOT NULL
);

-- Append-only: one row per movement of a balance or charge on a bill.
-- (customer_id, idempotency_key) makes every write apply once.
CREATE TABLE ledger_entries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    customer_id     TEXT    NOT NULL REFERENCES customers (id),
    kind            TEXT    NOT NULL
                            CHECK (kind IN ('reservation', 'settlement', 'refund', 'grant',
                                            'purchase', 'adjustment', 'charge', 'expiry')),
    amount          INTEGER NOT NULL,
    unit            TEXT    NOT NULL,
    balance_after   INTEGER,
    call_id         TEXT,
    plan_id         TEXT,
    tool            TEXT,
    idempotency_key TEXT    NOT NULL,
    reason          TEXT,
    created_at      INTEGER NOT NULL,
    UNIQUE (customer_id, idempotency_key)
);

CREATE INDEX ledger_entries_customer_id ON ledger_entries (customer_id, id);

-- The reservation of each logical call: its latest attempt and where that
-- attempt stands.
CREATE TABLE call_charges (
    customer_id TEXT    NOT NULL REFERENCES customers (id),
    charge_key  TEXT    NOT NULL,
    attempt     INTEGER NOT NULL CHECK (attempt >= 1),
    state       TEXT    NOT NULL CHECK (state IN ('reserved', 'settled', 'refunded')),
    amount      INTEGER NOT NULL CHECK (amount >= 0),
    call_id     TEXT    NOT NULL,
    plan_id     TEXT    NOT NULL,
    tool        TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (customer_id, charge_key)
) WITHOUT ROWID;

-- How far a counter went in one period (priced calls, free quotas).
CREATE TABLE period_counters (
    customer_id  TEXT    NOT NULL REFERENCES customers (id),
    counter      TEXT    NOT NULL,
    period_start INTEGER NOT NULL,
    used         INTEGER NOT NULL CHECK (used >= 0),
    PRIMARY KEY (customer_id, counter, period_start)
) WITHOUT ROWID;
