-- Residents' messages rendered before their contact was known: the contact (from cases.intake)
-- and the lifecycle event are read by two consumers, in no guaranteed order.
CREATE TABLE resident_backlog (
    event_id   uuid PRIMARY KEY,
    case_id    text NOT NULL,
    body       text NOT NULL,
    urgent     boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX resident_backlog_case ON resident_backlog (case_id);
