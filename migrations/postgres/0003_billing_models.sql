-- mcp-meter schema 3 (PostgreSQL): the billing models beyond prepaid
-- credits. Ledger entries of kind `usage` (units counted on a plan without
-- a balance: free or included quota, metered usage); the quota each
-- logical call took (so that a failed call gives back exactly what it
-- took, to the counter and period it took it from); each customer's
-- subscription; and the outbox of meter events for the payment provider,
-- written in the same transaction as the usage they report. Amounts and
-- units are integers; times are Unix milliseconds (BIGINT); keys are text
-- in the "C" collation.

-- The kind CHECK of schema 2 was created unnamed; PostgreSQL named it
-- ledger_entries_kind_check. Replaced under the same name.
ALTER TABLE ledger_entries
    DROP CONSTRAINT ledger_entries_kind_check,
    ADD CONSTRAINT ledger_entries_kind_check
        CHECK (kind IN ('reservation', 'settlement', 'refund', 'grant', 'purchase',
                        'adjustment', 'charge', 'expiry', 'usage'));

-- The quota each logical call took: its latest attempt, where that attempt
-- stands, and the counter, period and units it took.
CREATE TABLE quota_uses (
    customer_id  TEXT COLLATE "C" NOT NULL REFERENCES customers (id),
    charge_key   TEXT COLLATE "C" NOT NULL,
    attempt      BIGINT NOT NULL CHECK (attempt >= 1),
    state        TEXT   NOT NULL CHECK (state IN ('taken', 'released')),
    counter      TEXT COLLATE "C" NOT NULL,
    period_start BIGINT NOT NULL,
    units        BIGINT NOT NULL CHECK (units >= 1),
    call_id      TEXT COLLATE "C" NOT NULL,
    plan_id      TEXT   NOT NULL,
    tool         TEXT,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (customer_id, charge_key)
);

-- Each customer's subscription to a plan (at most one).
CREATE TABLE subscriptions (
    customer_id          TEXT COLLATE "C" NOT NULL PRIMARY KEY REFERENCES customers (id),
    plan_id              TEXT   NOT NULL,
    status               TEXT   NOT NULL
                                CHECK (status IN ('active', 'trialing', 'past_due', 'unpaid',
                                                  'canceled', 'incomplete', 'paused')),
    started_at           BIGINT NOT NULL,
    past_due_since       BIGINT,
    current_period_start BIGINT,
    current_period_end   BIGINT,
    external_id          TEXT COLLATE "C" UNIQUE,
    updated_at           BIGINT NOT NULL
);

-- Meter events waiting for (or delivered to) the payment provider.
CREATE TABLE meter_outbox (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id     TEXT COLLATE "C" NOT NULL REFERENCES customers (id),
    event_name      TEXT   NOT NULL,
    value           BIGINT NOT NULL,
    identifier      TEXT COLLATE "C" NOT NULL UNIQUE,
    occurred_at     BIGINT NOT NULL,
    status          TEXT   NOT NULL DEFAULT 'pending'
                           CHECK (status IN ('pending', 'sent', 'parked')),
    attempts        BIGINT NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error      TEXT,
    next_attempt_at BIGINT NOT NULL,
    sent_at         BIGINT,
    created_at      BIGINT NOT NULL
);

CREATE INDEX meter_outbox_due ON meter_outbox (status, next_attempt_at, id);
CREATE INDEX meter_outbox_customer_id ON meter_outbox (customer_id, id);

-- Reservations still held and settled calls by when they last changed: the
-- recovery sweep after an unclean stop looks for old ones.
CREATE INDEX call_charges_state ON call_charges (state, updated_at);
