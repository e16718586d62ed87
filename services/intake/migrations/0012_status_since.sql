-- When a case entered its current status: how long a case has waited in triage counts from
-- there, not from its last change (an erasure or a note would otherwise restart the clock).
ALTER TABLE cases ADD COLUMN status_since timestamptz;
UPDATE cases SET status_since = updated_at WHERE status = 'unroutable';
DROP INDEX cases_triage;
CREATE INDEX cases_triage ON cases ((coalesce(status_since, updated_at)))
    WHERE status = 'unroutable';
