-- What the notifier needs to know of each case to address its updates.
CREATE TABLE cases (
    case_id     text PRIMARY KEY,
    department  text,
    worker_id   text,
    grid_id     text,
    district    text,
    category    text,
    priority    text,
    reported_at timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Who wants what. A department's feed topic and its webhook endpoints; worker gateways.
CREATE TABLE subscriptions (
    id          bigserial PRIMARY KEY,
    owner_kind  text NOT NULL CHECK (owner_kind IN ('department', 'worker')),
    owner       text NOT NULL,               -- department code or worker id
    channel     text NOT NULL CHECK (channel IN ('webhook')),
    url         text NOT NULL,
    secrets     text[] NOT NULL,             -- whsec_…; several during a rotation
    active      boolean NOT NULL DEFAULT true,
    disabled_reason text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscriptions_owner ON subscriptions (owner_kind, owner) WHERE active;

-- The delivery log: one row per (event, recipient, channel). Its id is the webhook-id of every
-- attempt, so receivers can deduplicate; a crash repeats an attempt at most once.
CREATE TABLE deliveries (
    id              uuid PRIMARY KEY,
    event_id        uuid NOT NULL,
    subscription_id bigint NOT NULL REFERENCES subscriptions (id),
    payload         bytea NOT NULL,
    department      text,
    reported_at     timestamptz,
    state           text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'delivered', 'dead', 'disabled')),
    attempts        int NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_until     timestamptz,
    last_status     int,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    UNIQUE (event_id, subscription_id)
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 'pending';
CREATE TABLE seen_events (event_id uuid PRIMARY KEY, seen_at timestamptz NOT NULL DEFAULT now());
