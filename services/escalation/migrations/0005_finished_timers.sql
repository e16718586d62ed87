-- Retention: timers that fired or were cancelled are history the event stream already holds;
-- they go once their case's clock has been idle for the dedup period.
CREATE INDEX timers_finished ON timers (case_id) WHERE state <> 'pending';
CREATE INDEX cases_idle ON cases (updated_at);
