-- Duplicate hints point at the original report (a "root": itself no duplicate). Looking up
-- roots by category and latitude band keeps the check cheap even when hundreds of residents
-- report the same outage at the same building.
DROP INDEX IF EXISTS cases_nearby;
CREATE INDEX cases_duplicate_roots ON cases (category, lat)
    WHERE possible_duplicate_of IS NULL AND lat IS NOT NULL;
