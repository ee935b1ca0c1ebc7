-- mcp-meter schema 7 (MySQL 8 / MariaDB 10.5+): daily roll-ups of charges
-- and of outcomes, so that revenue, top spenders and refusal rates read
-- one row per day and group instead of every charge and every usage
-- record. Both are written in the transaction of the row they summarise
-- (the ledger entry, the usage batch) and filled here from the rows
-- already stored. A day is the UTC calendar day (`YYYY-MM-DD`) of the
-- Unix-millisecond instant, floored (also before 1970); date arithmetic,
-- so the session's time zone plays no part. The keys stay within InnoDB's
-- 3072-byte limit (616 characters at most, 4 bytes each).

-- One row per UTC day, customer, plan ('' when none), tool ('' when none)
-- and currency of the ledger's `charge` entries.
CREATE TABLE charges_daily (
    day         VARCHAR(10)  NOT NULL,
    customer_id VARCHAR(64)  NOT NULL,
    plan_id     VARCHAR(255) NOT NULL DEFAULT '',
    tool        VARCHAR(255) NOT NULL DEFAULT '',
    unit        VARCHAR(16)  NOT NULL,
    amount      BIGINT       NOT NULL DEFAULT 0,
    entries     BIGINT       NOT NULL DEFAULT 0,
    PRIMARY KEY (day, customer_id, plan_id, tool, unit)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- One row per UTC day, customer ('' when anonymous), tool ('' when none),
-- outcome and reason ('' when none) of the usage records.
CREATE TABLE outcomes_daily (
    day         VARCHAR(10)  NOT NULL,
    customer_id VARCHAR(64)  NOT NULL DEFAULT '',
    tool        VARCHAR(255) NOT NULL DEFAULT '',
    outcome     VARCHAR(32)  NOT NULL,
    reason      VARCHAR(255) NOT NULL DEFAULT '',
    calls       BIGINT       NOT NULL DEFAULT 0,
    PRIMARY KEY (day, customer_id, tool, outcome, reason)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

INSERT INTO charges_daily (day, customer_id, plan_id, tool, unit, amount, entries)
SELECT DATE_FORMAT(DATE_ADD(DATE '1970-01-01', INTERVAL
           (created_at - MOD(MOD(created_at, 86400000) + 86400000, 86400000)) DIV 86400000 DAY),
           '%Y-%m-%d'),
       customer_id, COALESCE(plan_id, ''), COALESCE(tool, ''), unit,
       CAST(SUM(amount) AS SIGNED), COUNT(*)
FROM ledger_entries
WHERE kind = 'charge'
GROUP BY 1, 2, 3, 4, 5;

INSERT INTO outcomes_daily (day, customer_id, tool, outcome, reason, calls)
SELECT DATE_FORMAT(DATE_ADD(DATE '1970-01-01', INTERVAL
           (started_at - MOD(MOD(started_at, 86400000) + 86400000, 86400000)) DIV 86400000 DAY),
           '%Y-%m-%d'),
       COALESCE(customer_id, ''), COALESCE(tool, ''), outcome, COALESCE(reason, ''), COUNT(*)
FROM usage_records
GROUP BY 1, 2, 3, 4, 5;
