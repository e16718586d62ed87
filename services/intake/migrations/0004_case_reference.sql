-- A case by the short reference residents are given (shared.ids.case_reference): the hotline
-- looks it up with GET /v1/cases?reference=.
CREATE INDEX cases_reference ON cases (upper(right(case_id, 8)));
