-- Retention (shared/retention.py, services/router/retention.py). BRIN: the rows come in time
-- order, and a BRIN index costs the hot path next to nothing.
CREATE INDEX decisions_age ON decisions USING brin (decided_at);
CREATE INDEX seen_events_age ON seen_events USING brin (seen_at);
CREATE INDEX cases_care_flags_kept ON cases (updated_at) WHERE NOT open AND facts ? 'care_groups';
