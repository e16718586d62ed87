-- Closing resolved cases nobody verified: a "close" timer per resolution, due when the
-- verification window ends. `started_at` is the resolution it is about; intake closes the
-- case only if that is still the case's latest resolution.
ALTER TABLE timers DROP CONSTRAINT timers_kind_check;
ALTER TABLE timers ADD CONSTRAINT timers_kind_check CHECK (kind IN ('warn', 'escalate', 'close'));
ALTER TABLE timers DROP CONSTRAINT timers_deadline_check;
ALTER TABLE timers ADD CONSTRAINT timers_deadline_check
    CHECK (deadline IN ('acknowledge', 'resolve', 'verify'));
ALTER TABLE timers ADD COLUMN started_at timestamptz;
