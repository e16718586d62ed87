-- City facilities a report may name (a street light's number, a manhole cover's, a heating
-- substation's): each locates its report in its grid, as a building code does.
CREATE TABLE facilities (
    code    text PRIMARY KEY,
    kind    text NOT NULL,                    -- street_light, manhole, heating_substation, …
    grid_id text NOT NULL,
    name    text
);
