-- mcp-meter schema 6 (MySQL/MariaDB): analytics.
-- The analytics API sums ledger entries of one kind (charges, settlements)
-- created in a time range; this index finds them without scanning the
-- whole ledger. (Usage records by start time and the daily roll-ups by day
-- are indexed already.)

CREATE INDEX ledger_entries_kind_created ON ledger_entries (kind, created_at);
