-- The service catalogue: editable at run time (griddispatch catalogue import).
CREATE TABLE categories (
    code        text PRIMARY KEY,
    definition  jsonb NOT NULL,             -- one entry of data/catalogue.yaml
    active      boolean NOT NULL DEFAULT true,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- API keys: only a SHA-256 of the secret is kept; the prefix finds the row.
CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    prefix      text NOT NULL UNIQUE,
    secret_hash bytea NOT NULL,
    name        text NOT NULL,
    role        text NOT NULL CHECK (role IN ('resident_app', 'department', 'worker', 'operator', 'admin')),
    scope       text,                        -- department code or worker id
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- Every case, as intake knows it: written on report, updated by accepted steps and by the
-- lifecycle events of other services (the read model).
CREATE TABLE cases (
    case_id          text PRIMARY KEY,
    tracking_token   text NOT NULL UNIQUE,
    status           text NOT NULL,
    category         text NOT NULL,
    description      text NOT NULL,
    channel          text NOT NULL,
    lat              double precision,
    lon              double precision,
    address          text,
    building_code    text,
    reporter         jsonb,                  -- personal data: never in feeds, logs or metrics
    on_behalf_of     text,
    reported_by      text,
    media_urls       jsonb NOT NULL DEFAULT '[]',
    sensitivity      jsonb NOT NULL DEFAULT '{}',
    possible_duplicate_of text,
    department       text,
    grid_id          text,
    district         text,
    worker_id        text,
    priority         text,
    acknowledge_by   timestamptz,
    resolve_by       timestamptz,
    escalation_level int NOT NULL DEFAULT 0,
    rating           int,
    reported_at      timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    reported_with_key uuid
);
CREATE INDEX cases_department ON cases (department, updated_at);
CREATE INDEX cases_worker ON cases (worker_id, updated_at);
CREATE INDEX cases_updated ON cases (updated_at, case_id);
CREATE INDEX cases_nearby ON cases (category, reported_at) WHERE lat IS NOT NULL;

-- The timeline; its primary key makes applying a lifecycle event idempotent.
CREATE TABLE case_events (
    event_id    uuid PRIMARY KEY,
    case_id     text NOT NULL,
    event_type  text NOT NULL,
    occurred_at timestamptz NOT NULL,
    producer    text NOT NULL,
    payload     jsonb NOT NULL
);
CREATE INDEX case_events_case ON case_events (case_id, occurred_at);

-- Idempotency-Key: the first answer is kept and replayed for retries.
CREATE TABLE idempotency_keys (
    key_owner     text NOT NULL,             -- API key id or client address
    idem_key      text NOT NULL,
    request_hash  text NOT NULL,
    status_code   int NOT NULL,
    response      jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key_owner, idem_key)
);
