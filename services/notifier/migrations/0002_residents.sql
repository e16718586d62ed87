-- Residents who asked to hear about their case (consent given with the report). Personal data:
-- only here, never in feeds, logs or metrics; deleted with the case's retention.
CREATE TABLE residents (
    case_id    text PRIMARY KEY,
    email      text,
    phone      text,
    locale     text NOT NULL DEFAULT 'zh-CN',
    created_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE cases ADD COLUMN resolve_by timestamptz;

CREATE TABLE resident_messages (
    id          uuid PRIMARY KEY,                -- md5(event/channel): one message per event
    case_id     text NOT NULL,
    channel     text NOT NULL CHECK (channel IN ('email', 'sms')),
    address     text NOT NULL,
    body        text NOT NULL,
    state       text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'dead')),
    attempts    int NOT NULL DEFAULT 0,
    send_after  timestamptz NOT NULL,            -- after quiet hours for non-urgent cases
    lease_until timestamptz,
    last_error  text,
    sent_at     timestamptz
);
CREATE INDEX resident_messages_due ON resident_messages (send_after) WHERE state = 'pending';
