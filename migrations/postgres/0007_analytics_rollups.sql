-- mcp-meter schema 7 (PostgreSQL): daily roll-ups of charges and of
-- outcomes, so that revenue, top spenders and refusal rates read one row
-- per day and group instead of every charge and every usage record. Both
-- are written in the transaction of the row they summarise (the ledger
-- entry, the usage batch) and filled here from the rows already stored. A
-- day is the UTC calendar day (`YYYY-MM-DD`) of the Unix-millisecond
-- instant, floored (also before 1970); date arithmetic, so the session's
-- time zone plays no part.

-- One row per UTC day, customer, plan ('' when none), tool ('' when none)
-- and currency of the ledger's `charge` entries.
CREATE TABLE charges_daily (
    day         TEXT COLLATE "C" NOT NULL,
    customer_id TEXT COLLATE "C" NOT NULL,
    plan_id     TEXT COLLATE "C" NOT NULL DEFAULT '',
    tool        TEXT COLLATE "C" NOT NULL DEFAULT '',
    unit        TEXT COLLATE "C" NOT NULL,
    amount      BIGINT NOT NULL DEFAULT 0,
    entries     BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (day, customer_id, plan_id, tool, unit)
);

-- One row per UTC day, customer ('' when anonymous), tool ('' when none),
-- outcome and reason ('' when none) of the usage records.
CREATE TABLE outcomes_daily (
    day         TEXT COLLATE "C" NOT NULL,
    customer_id TEXT COLLATE "C" NOT NULL DEFAULT '',
    tool        TEXT COLLATE "C" NOT NULL DEFAULT '',
    outcome     TEXT COLLATE "C" NOT NULL,
    reason      TEXT COLLATE "C" NOT NULL DEFAULT '',
    calls       BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (day, customer_id, tool, outcome, reason)
);

INSERT INTO charges_daily (day, customer_id, plan_id, tool, unit, amount, entries)
SELECT to_char(DATE '1970-01-01'
                   + CAST((created_at - ((created_at % 86400000) + 86400000) % 86400000)
                          / 86400000 AS INTEGER), 'YYYY-MM-DD'),
       customer_id, COALESCE(plan_id, ''), COALESCE(tool, ''), unit,
       CAST(SUM(amount) AS BIGINT), COUNT(*)
FROM ledger_entries
WHERE kind = 'charge'
GROUP BY 1, 2, 3, 4, 5;

INSERT INTO outcomes_daily (day, customer_id, tool, outcome, reason, calls)
SELECT to_char(DATE '1970-01-01'
                   + CAST((started_at - ((started_at % 86400000) + 86400000) % 86400000)
                          / 86400000 AS INTEGER), 'YYYY-MM-DD'),
       COALESCE(customer_id, ''), COALESCE(tool, ''), outcome, COALESCE(reason, ''), COUNT(*)
FROM usage_records
GROUP BY 1, 2, 3, 4, 5;
