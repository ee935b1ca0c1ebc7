-- mcp-meter schema 7 (SQLite): daily roll-ups of charges and of outcomes,
-- so that revenue, top spenders and refusal rates read one row per day and
-- group instead of every charge and every usage record. Both are written
-- in the transaction of the row they summarise (the ledger entry, the
-- usage batch) and filled here from the rows already stored. A day is the
-- UTC calendar day (`YYYY-MM-DD`) of the Unix-millisecond instant,
-- floored (also before 1970).

-- One row per UTC day, customer, plan ('' when none), tool ('' when none)
-- and currency of the ledger's `charge` entries.
CREATE TABLE charges_daily (
    day         TEXT    NOT NULL,
    customer_id TEXT    NOT NULL,
    plan_id     TEXT    NOT NULL DEFAULT '',
    tool        TEXT    NOT NULL DEFAULT '',
    unit        TEXT    NOT NULL,
    amount      INTEGER NOT NULL DEFAULT 0,
    entries     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, customer_id, plan_id, tool, unit)
) WITHOUT ROWID;

-- One row per UTC day, customer ('' when anonymous), tool ('' when none),
-- outcome and reason ('' when none) of the usage records.
CREATE TABLE outcomes_daily (
    day         TEXT    NOT NULL,
    customer_id TEXT    NOT NULL DEFAULT '',
    tool        TEXT    NOT NULL DEFAULT '',
    outcome     TEXT    NOT NULL,
    reason      TEXT    NOT NULL DEFAULT '',
    calls       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, customer_id, tool, outcome, reason)
) WITHOUT ROWID;

INSERT INTO charges_daily (day, customer_id, plan_id, tool, unit, amount, entries)
SELECT date((created_at - ((created_at % 86400000) + 86400000) % 86400000) / 1000, 'unixepoch'),
       customer_id, COALESCE(plan_id, ''), COALESCE(tool, ''), unit, SUM(amount), COUNT(*)
FROM ledger_entries
WHERE kind = 'charge'
GROUP BY 1, 2, 3, 4, 5;

INSERT INTO outcomes_daily (day, customer_id, tool, outcome, reason, calls)
SELECT date((started_at - ((started_at % 86400000) + 86400000) % 86400000) / 1000, 'unixepoch'),
       COALESCE(customer_id, ''), COALESCE(tool, ''), outcome, COALESCE(reason, ''), COUNT(*)
FROM usage_records
GROUP BY 1, 2, 3, 4, 5;
