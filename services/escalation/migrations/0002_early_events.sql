-- Lifecycle events of a case escalation has no clock for yet: its routing failed here (a dead
-- letter, say, during a rollout) and comes later, replayed. When it comes, these are applied
-- after it, in order, so the clock is as if the events had come in order: an acknowledged or
-- resolved case is not escalated for a deadline it already met.
CREATE TABLE early_events (
    id          bigserial PRIMARY KEY,
    case_id     text NOT NULL,
    occurred_at timestamptz NOT NULL,
    event_type  text NOT NULL,
    payload     jsonb NOT NULL,
    kept_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX early_events_case ON early_events (case_id);
CREATE INDEX early_events_age ON early_events (kept_at);
