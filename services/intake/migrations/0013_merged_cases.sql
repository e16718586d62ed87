-- A report merged into another case (the same problem): which case, and the cases merged into
-- each one (found when that case is resolved, and to move them along when it is merged too).
ALTER TABLE cases ADD COLUMN merged_into text;
CREATE INDEX cases_merged_into ON cases (merged_into) WHERE merged_into IS NOT NULL;
