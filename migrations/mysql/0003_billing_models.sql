-- mcp-meter schema 3 (MySQL 8 / MariaDB 10.5+): the billing models beyond
-- prepaid credits. Ledger entries of kind `usage` (units counted on a plan
-- without a balance: free or included quota, metered usage); the quota
-- each logical call took (so that a failed call gives back exactly what it
-- took, to the counter and period it took it from); each customer's
-- subscription; and the outbox of meter events for the payment provider,
-- written in the same transaction as the usage they report. Amounts and
-- units are integers; times are Unix milliseconds (BIGINT). InnoDB,
-- utf8mb4 with binary collation; indexed VARCHARs sized as in schema 2
-- (charge keys and counter names 512 characters, plan ids and tool names
-- 255, call ids 128; a meter event name is at most 100, the payment
-- provider's limit).

-- The kind CHECK of schema 2 was written on the column. MariaDB keeps it
-- as a column constraint named `kind`, which only redefining the column
-- drops (DROP CONSTRAINT cannot); MySQL 8 makes it a table constraint
-- named ledger_entries_chk_1, which redefining the column keeps. So: the
-- column is redefined without it, any CHECK still on the table is dropped
-- by the name the server gave it, and the new CHECK is added by name.
ALTER TABLE ledger_entries MODIFY kind VARCHAR(16) NOT NULL;

SET @mcp_meter_kind_check = (
    SELECT CONSTRAINT_NAME FROM information_schema.TABLE_CONSTRAINTS
    WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'ledger_entries'
      AND CONSTRAINT_TYPE = 'CHECK'
    LIMIT 1
);
SET @mcp_meter_sql = IFNULL(
    CONCAT('ALTER TABLE ledger_entries DROP CONSTRAINT `', @mcp_meter_kind_check, '`'),
    'DO 0'
);
PREPARE mcp_meter_drop_kind_check FROM @mcp_meter_sql;
EXECUTE mcp_meter_drop_kind_check;
DEALLOCATE PREPARE mcp_meter_drop_kind_check;
SET @mcp_meter_kind_check = NULL;
SET @mcp_meter_sql = NULL;

ALTER TABLE ledger_entries
    ADD CONSTRAINT ledger_entries_kind
        CHECK (kind IN ('reservation', 'settlement', 'refund', 'grant', 'purchase',
                        'adjustment', 'charge', 'expiry', 'usage'));

-- The quota each logical call took: its latest attempt, where that attempt
-- stands, and the counter, period and units it took.
CREATE TABLE quota_uses (
    customer_id  VARCHAR(64)  NOT NULL,
    charge_key   VARCHAR(512) NOT NULL,
    attempt      BIGINT       NOT NULL CHECK (attempt >= 1),
    state        VARCHAR(16)  NOT NULL CHECK (state IN ('taken', 'released')),
    counter      VARCHAR(512) NOT NULL,
    period_start BIGINT       NOT NULL,
    units        BIGINT       NOT NULL CHECK (units >= 1),
    call_id      VARCHAR(128) NOT NULL,
    plan_id      VARCHAR(255) NOT NULL,
    tool         VARCHAR(255),
    created_at   BIGINT       NOT NULL,
    updated_at   BIGINT       NOT NULL,
    PRIMARY KEY (customer_id, charge_key),
    CONSTRAINT quota_uses_customer FOREIGN KEY (customer_id) REFERENCES customers (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Each customer's subscription to a plan (at most one).
CREATE TABLE subscriptions (
    customer_id          VARCHAR(64)  NOT NULL PRIMARY KEY,
    plan_id              VARCHAR(255) NOT NULL,
    status               VARCHAR(16)  NOT NULL
                                      CHECK (status IN ('active', 'trialing', 'past_due',
                                                        'unpaid', 'canceled', 'incomplete',
                                                        'paused')),
    started_at           BIGINT       NOT NULL,
    past_due_since       BIGINT,
    current_period_start BIGINT,
    current_period_end   BIGINT,
    external_id          VARCHAR(255),
    updated_at           BIGINT       NOT NULL,
    UNIQUE KEY subscriptions_external_id (external_id),
    CONSTRAINT subscriptions_customer FOREIGN KEY (customer_id) REFERENCES customers (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Meter events waiting for (or delivered to) the payment provider.
CREATE TABLE meter_outbox (
    id              BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    customer_id     VARCHAR(64)  NOT NULL,
    event_name      VARCHAR(100) NOT NULL,
    value           BIGINT       NOT NULL,
    identifier      VARCHAR(128) NOT NULL,
    occurred_at     BIGINT       NOT NULL,
    status          VARCHAR(16)  NOT NULL DEFAULT 'pending'
                                 CHECK (status IN ('pending', 'sent', 'parked')),
    attempts        BIGINT       NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error      TEXT,
    next_attempt_at BIGINT       NOT NULL,
    sent_at         BIGINT,
    created_at      BIGINT       NOT NULL,
    UNIQUE KEY meter_outbox_identifier (identifier),
    INDEX meter_outbox_due (status, next_attempt_at, id),
    INDEX meter_outbox_customer_id (customer_id, id),
    CONSTRAINT meter_outbox_customer FOREIGN KEY (customer_id) REFERENCES customers (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Reservations still held and settled calls by when they last changed: the
-- recovery sweep after an unclean stop looks for old ones.
CREATE INDEX call_charges_state ON call_charges (state, updated_at);
