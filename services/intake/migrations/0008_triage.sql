-- Cases waiting in triage (no grid or department found: an operator routes them by hand), for
-- the gauges of how many and how long (griddispatch_triage_*) without scanning every case.
CREATE INDEX cases_triage ON cases (updated_at) WHERE status = 'unroutable';
