-- mcp-meter schema 3 (SQLite): the billing models beyond prepaid credits.
-- Ledger entries of kind `usage` (units counted on a plan without a
-- balance: free or included quota, metered usage); the quota each logical
-- call took (so that a failed call gives back exactly what it took, to the
-- counter and period it took it from); each customer's subscription; and
-- the outbox of meter events for the payment provider, written in the
-- same transaction as the usage they report. Amounts and units are
-- integers; times are Unix milliseconds.
--
-- SQLite cannot alter a CHECK, so `ledger_entries` is rebuilt: a new table
-- with the wider CHECK, every row copied with its id, the old table
-- dropped and the new one renamed, its index recreated. The AUTOINCREMENT
-- sequence is carried over, so no id is ever handed out twice. The whole
-- migration runs in one transaction; nothing references `ledger_entries`.

CREATE TABLE ledger_entries_new (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    customer_id     TEXT    NOT NULL REFERENCES customers (id),
    kind            TEXT    NOT NULL
                            CHECK (kind IN ('reservation', 'settlement', 'refund', 'grant',
                                            'purchase', 'adjustment', 'charge', 'expiry',
                                            'usage')),
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

INSERT INTO ledger_entries_new (id, customer_id, kind, amount, unit, balance_after, call_id,
                                plan_id, tool, idempotency_key, reason, created_at)
SELECT id, customer_id, kind, amount, unit, balance_after, call_id,
       plan_id, tool, idempotency_key, reason, created_at
FROM ledger_entries
ORDER BY id;

-- The new table's sequence continues where the old one stopped (which may
-- be past the highest id copied).
DELETE FROM sqlite_sequence WHERE name = 'ledger_entries_new';
INSERT INTO sqlite_sequence (name, seq)
SELECT 'ledger_entries_new', seq FROM sqlite_sequence WHERE name = 'ledger_entries';

DROP TABLE ledger_entries;
ALTER TABLE ledger_entries_new RENAME TO ledger_entries;
CREATE INDEX ledger_entries_customer_id ON ledger_entries (customer_id, id);

-- The quota each logical call took: its latest attempt, where that attempt
-- stands, and the counter, period and units it took.
CREATE TABLE quota_uses (
    customer_id  TEXT    NOT NULL REFERENCES customers (id),
    charge_key   TEXT    NOT NULL,
    attempt      INTEGER NOT NULL CHECK (attempt >= 1),
    state        TEXT    NOT NULL CHECK (state IN ('taken', 'released')),
    counter      TEXT    NOT NULL,
    period_start INTEGER NOT NULL,
    units        INTEGER NOT NULL CHECK (units >= 1),
    call_id      TEXT    NOT NULL,
    plan_id      TEXT    NOT NULL,
    tool         TEXT,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (customer_id, charge_key)
) WITHOUT ROWID;

-- Each customer's subscription to a plan (at most one).
CREATE TABLE subscriptions (
    customer_id          TEXT    NOT NULL PRIMARY KEY REFERENCES customers (id),
    plan_id              TEXT    NOT NULL,
    status               TEXT    NOT NULL
                                 CHECK (status IN ('active', 'trialing', 'past_due', 'unpaid',
                                                   'canceled', 'incomplete', 'paused')),
    started_at           INTEGER NOT NULL,
    past_due_since       INTEGER,
    current_period_start INTEGER,
    current_period_end   INTEGER,
    external_id          TEXT    UNIQUE,
    updated_at           INTEGER NOT NULL
) WITHOUT ROWID;

-- Meter events waiting for (or delivered to) the payment provider.
CREATE TABLE meter_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    customer_id     TEXT    NOT NULL REFERENCES customers (id),
    event_name      TEXT    NOT NULL,
    value           INTEGER NOT NULL,
    identifier      TEXT    NOT NULL UNIQUE,
    occurred_at     INTEGER NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'pending'
                            CHECK (status IN ('pending', 'sent', 'parked')),
    attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error      TEXT,
    next_attempt_at INTEGER NOT NULL,
    sent_at         INTEGER,
    created_at      INTEGER NOT NULL
);

CREATE INDEX meter_outbox_due ON meter_outbox (status, next_attempt_at, id);
CREATE INDEX meter_outbox_customer_id ON meter_outbox (customer_id, id);

-- Reservations still held and settled calls by when they last changed: the
-- recovery sweep after an unclean stop looks for old ones.
CREATE INDEX call_charges_state ON call_charges (state, updated_at);
