-- mcp-meter schema 5 (PostgreSQL): what is sent to the payment provider.
-- Meter events are sent in batches, one per customer and meter. A batch is fixed in the database
-- (batch_id on each of its events) before it is sent, and the batch id is
-- both the meter event's identifier and the request's idempotency key at
-- the provider: a batch retried after a failure or a crash is the same
-- events with the same total, so the provider counts it once.

ALTER TABLE meter_outbox ADD COLUMN batch_id TEXT COLLATE "C";

CREATE INDEX meter_outbox_batch_id ON meter_outbox (batch_id);

-- Invoice items for the payment provider: one per customer, plan and closed
-- billing period of a per-call plan, with the period's charges (micro-units)
-- and the amount invoiced (the currency's minor units). Unique per customer,
-- plan and period, so a period is invoiced once however many instances
-- close it.
CREATE TABLE invoice_outbox (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id     TEXT COLLATE "C" NOT NULL REFERENCES customers (id),
    plan_id         TEXT COLLATE "C" NOT NULL,
    period_start    BIGINT NOT NULL,
    period_end      BIGINT NOT NULL,
    currency        TEXT   NOT NULL,
    charged         BIGINT NOT NULL CHECK (charged >= 0),
    amount          BIGINT NOT NULL CHECK (amount >= 0),
    minimum_applied BIGINT NOT NULL DEFAULT 0 CHECK (minimum_applied IN (0, 1)),
    status          TEXT   NOT NULL DEFAULT 'pending'
                           CHECK (status IN ('pending', 'sent', 'parked')),
    attempts        BIGINT NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error      TEXT,
    next_attempt_at BIGINT NOT NULL,
    sent_at         BIGINT,
    external_id     TEXT,
    created_at      BIGINT NOT NULL,
    UNIQUE (customer_id, plan_id, period_start)
);

CREATE INDEX invoice_outbox_due ON invoice_outbox (status, next_attempt_at, id);
