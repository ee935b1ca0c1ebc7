-- mcp-meter schema 5 (SQLite): meter events are sent to the payment provider
-- in batches, one per customer and meter. A batch is fixed in the database
-- (batch_id on each of its events) before it is sent, and the batch id is
-- both the meter event's identifier and the request's idempotency key at
-- the provider: a batch retried after a failure or a crash is the same
-- events with the same total, so the provider counts it once.

ALTER TABLE meter_outbox ADD COLUMN batch_id TEXT;

CREATE INDEX meter_outbox_batch_id ON meter_outbox (batch_id);
