-- mcp-meter schema 4 (PostgreSQL): Stripe webhooks. Every event Stripe
-- delivers is stored once by its id (a redelivery finds it stored and is
-- acknowledged without a second effect), then processed from here by the
-- webhook worker, which retries a failed event with backoff until it gives
-- up (`failed`). `created` is Stripe's own event time in Unix seconds; the
-- other times are Unix milliseconds (BIGINT); ids are text in the "C"
-- collation. Subscriptions remember the event time of the last provider
-- event applied to them, so an older event delivered late never overwrites
-- a newer state. Customers are looked up by their Stripe customer id.

CREATE TABLE webhook_events (
    id              TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    event_type      TEXT   NOT NULL,
    created         BIGINT NOT NULL,
    payload         TEXT   NOT NULL,
    received_at     BIGINT NOT NULL,
    status          TEXT   NOT NULL DEFAULT 'pending'
                           CHECK (status IN ('pending', 'processed', 'failed')),
    attempts        BIGINT NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error      TEXT,
    next_attempt_at BIGINT NOT NULL,
    processed_at    BIGINT
);

CREATE INDEX webhook_events_due ON webhook_events (status, next_attempt_at);

ALTER TABLE subscriptions ADD COLUMN provider_event_at BIGINT;

CREATE INDEX customers_stripe_customer_id ON customers (stripe_customer_id);
