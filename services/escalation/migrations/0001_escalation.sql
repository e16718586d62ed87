-- What escalation knows of each open case: its chain and the deadline it is racing.
CREATE TABLE cases (
    case_id           text PRIMARY KEY,
    department        text,
    district          text,
    street_office     text,
    grid_id           text,
    chain             jsonb NOT NULL,
    working_time      boolean NOT NULL DEFAULT false,
    warn_before_s     double precision NOT NULL DEFAULT 0,
    ack_window_s      double precision NOT NULL,
    resolve_window_s  double precision NOT NULL,
    phase             text NOT NULL,     -- acknowledge | resolve | paused | done
    due_at            timestamptz,       -- the current deadline
    resolve_due_at    timestamptz,
    paused_at         timestamptz,
    paused_phase      text,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- Durable timers. A scheduler claims due ones with FOR UPDATE SKIP LOCKED; firing one, writing
-- its event to the outbox and arming the next happen in one transaction.
CREATE TABLE timers (
    id          bigserial PRIMARY KEY,
    case_id     text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('warn', 'escalate')),
    deadline    text NOT NULL CHECK (deadline IN ('acknowledge', 'resolve')),
    level       int NOT NULL,
    repeat      int NOT NULL DEFAULT 0,
    deadline_at timestamptz NOT NULL,    -- the deadline the timer is about
    due_at      timestamptz NOT NULL,
    version     int NOT NULL DEFAULT 1,  -- bumped whenever the timer is moved
    state       text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'fired', 'cancelled')),
    fired_at    timestamptz
);
CREATE INDEX timers_due ON timers (due_at) WHERE state = 'pending';
CREATE INDEX timers_case ON timers (case_id) WHERE state = 'pending';

CREATE TABLE seen_events (event_id uuid PRIMARY KEY, seen_at timestamptz NOT NULL DEFAULT now());

-- Emergency ("wartime") mode per area, and the audit trail of every switch.
CREATE TABLE emergency_areas (
    area   text PRIMARY KEY,
    factor double precision NOT NULL CHECK (factor > 0 AND factor <= 1),
    reason text NOT NULL,
    by     text NOT NULL,
    since  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE emergency_log (
    id     bigserial PRIMARY KEY,
    area   text NOT NULL,
    action text NOT NULL CHECK (action IN ('on', 'off')),
    factor double precision,
    reason text NOT NULL,
    by     text NOT NULL,
    at     timestamptz NOT NULL DEFAULT now(),
    timers_moved int NOT NULL DEFAULT 0
);
