-- The transactional outbox: rows written in the same transaction as the state change they
-- announce, published to Kafka by the OutboxRelay, and deleted only after the broker acked.
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,           -- publication order
    event_id    uuid NOT NULL UNIQUE,
    topic       text NOT NULL,
    key         text NOT NULL,                   -- the case id: per-case order in Kafka
    value       bytea NOT NULL,                  -- the envelope as JSON, exactly as sent
    headers     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
