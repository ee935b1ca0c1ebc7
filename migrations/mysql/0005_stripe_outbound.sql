-- mcp-meter schema 5 (MySQL): what is sent to the payment provider.
-- Meter events are sent in batches, one per customer and meter. A batch is fixed in the database
-- (batch_id on each of its events) before it is sent, and the batch id is
-- both the meter event's identifier and the request's idempotency key at
-- the provider: a batch retried after a failure or a crash is the same
-- events with the same total, so the provider counts it once.

ALTER TABLE meter_outbox ADD COLUMN batch_id VARCHAR(64);

CREATE INDEX meter_outbox_batch_id ON meter_outbox (batch_id);

-- Invoice items for the payment provider: one per customer, plan and closed
-- billing period of a per-call plan, with the period's charges (micro-units)
-- and the amount invoiced (the currency's minor units). Unique per customer,
-- plan and period, so a period is invoiced once however many instances
-- close it.
CREATE TABLE invoice_outbox (
    id              BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    customer_id     VARCHAR(64)  NOT NULL,
    plan_id         VARCHAR(100) NOT NULL,
    period_start    BIGINT       NOT NULL,
    period_end      BIGINT       NOT NULL,
    currency        VARCHAR(16)  NOT NULL,
    charged         BIGINT       NOT NULL CHECK (charged >= 0),
    amount          BIGINT       NOT NULL CHECK (amount >= 0),
    minimum_applied BIGINT       NOT NULL DEFAULT 0 CHECK (minimum_applied IN (0, 1)),
    status          VARCHAR(16)  NOT NULL DEFAULT 'pending'
                                 CHECK (status IN ('pending', 'sent', 'parked')),
    attempts        BIGINT       NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error      TEXT,
    next_attempt_at BIGINT       NOT NULL,
    sent_at         BIGINT,
    external_id     VARCHAR(255),
    created_at      BIGINT       NOT NULL,
    UNIQUE KEY invoice_outbox_period (customer_id, plan_id, period_start),
    INDEX invoice_outbox_due (status, next_attempt_at, id),
    CONSTRAINT invoice_outbox_customer FOREIGN KEY (customer_id) REFERENCES customers (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
