-- Duplicate hints for reports that name a place rather than a point: the same facility (a
-- street light reported by every passer-by) or the same building (a block without heating).
CREATE INDEX cases_duplicate_facilities ON cases (category, facility_code)
    WHERE possible_duplicate_of IS NULL AND facility_code IS NOT NULL;
CREATE INDEX cases_duplicate_buildings ON cases (category, building_code)
    WHERE possible_duplicate_of IS NULL AND building_code IS NOT NULL;
