-- Cases whose resident had their personal data erased (PersonalDataErased). Kept for the dedup
-- period: a case's routing that reaches the router only after its erasure (the router lagging,
-- a dead letter replayed) is recorded without the care groups.
CREATE TABLE erased_cases (
    case_id text PRIMARY KEY,
    erased_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX erased_cases_age ON erased_cases USING brin (erased_at);
