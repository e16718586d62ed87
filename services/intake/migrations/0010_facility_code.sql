-- A city facility the report names (a street light's number, a manhole cover's, a heating
-- substation's): it locates the report through the router's facility table.
ALTER TABLE cases ADD COLUMN facility_code text;
