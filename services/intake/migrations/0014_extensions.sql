-- More time to resolve a case: the extension its department or worker asked for, waiting for
-- an operator's answer (cleared when granted, refused, or when the case is no longer being
-- handled). Operators list the waiting ones.
ALTER TABLE cases ADD COLUMN extension_until timestamptz,
                  ADD COLUMN extension_reason text,
                  ADD COLUMN extension_requested_at timestamptz;
CREATE INDEX cases_extension_asked ON cases (extension_requested_at)
    WHERE extension_until IS NOT NULL;
