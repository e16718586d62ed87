-- Reference data: the places, people and rules the router decides with.
CREATE TABLE districts (code text PRIMARY KEY, name text NOT NULL, contact text);
CREATE TABLE street_offices (
    code text PRIMARY KEY, district text NOT NULL, name text NOT NULL, contact text);
CREATE TABLE communities (
    code text PRIMARY KEY, street_office text NOT NULL, name text NOT NULL, contact text);
CREATE TABLE grids (
    grid_id        text PRIMARY KEY,
    kind           text NOT NULL CHECK (kind IN ('comprehensive', 'dedicated')),
    dedicated_type text,
    community      text NOT NULL,
    leader_name    text NOT NULL,
    leader_contact text,
    parent_grid    text,
    geometry       bytea NOT NULL              -- WKB, WGS84
);
CREATE TABLE buildings (code text PRIMARY KEY, grid_id text NOT NULL);
CREATE TABLE departments (code text PRIMARY KEY, name text NOT NULL, contact text);
CREATE TABLE workers (
    worker_id text PRIMARY KEY,
    grid_id   text NOT NULL,
    name      text NOT NULL,
    on_duty   boolean NOT NULL DEFAULT true,
    capacity  int NOT NULL DEFAULT 20,
    contact   text
);
CREATE INDEX workers_grid ON workers (grid_id);
CREATE TABLE categories (code text PRIMARY KEY, definition jsonb NOT NULL);
CREATE TABLE rules (position int PRIMARY KEY, rule jsonb NOT NULL);
CREATE TABLE emergency_areas (
    area   text PRIMARY KEY,                  -- district, street office or grid code
    factor double precision NOT NULL CHECK (factor > 0 AND factor <= 1),
    reason text NOT NULL,
    since  timestamptz NOT NULL DEFAULT now()
);
-- Every change to the tables above bumps this; routers reload when it moves.
CREATE TABLE refdata_version (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    version  bigint NOT NULL
);
INSERT INTO refdata_version VALUES (true, 0);

-- What the router knows of each case, and its decisions (the idempotency log: a redelivered
-- input republishes the very same decision).
CREATE TABLE cases (
    case_id    text PRIMARY KEY,
    facts      jsonb NOT NULL,
    status     text NOT NULL,                 -- routed | unroutable
    department text,
    worker_id  text,
    open       boolean NOT NULL DEFAULT true,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX cases_open_worker ON cases (worker_id) WHERE open;
CREATE INDEX cases_triage ON cases (updated_at) WHERE status = 'unroutable';
CREATE TABLE decisions (
    source_event_id uuid PRIMARY KEY,
    case_id         text NOT NULL,
    envelope        bytea NOT NULL,
    decided_at      timestamptz NOT NULL DEFAULT now()
);
-- Lifecycle events already folded into the open-case counts.
CREATE TABLE seen_events (event_id uuid PRIMARY KEY, seen_at timestamptz NOT NULL DEFAULT now());
