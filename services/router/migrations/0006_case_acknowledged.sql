-- Whether the case's worker has acknowledged it since its last routing (from the lifecycle
-- events): a case not yet acknowledged moves to another worker when its worker goes off duty
-- (a handover). NULL: not known — reopened since, or routed before this column — and such a
-- case never moves on its own.
ALTER TABLE cases ADD COLUMN acknowledged boolean;
