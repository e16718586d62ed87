-- Departments are told by e-mail and grid workers by SMS, besides webhooks: a subscription is
-- now a webhook endpoint (url, secrets) or an address (e-mail, phone) with a language. Their
-- messages go through the same delivery log (unique per event and subscription, retried,
-- dead-lettered and replayed like webhooks).
ALTER TABLE subscriptions DROP CONSTRAINT subscriptions_channel_check;
ALTER TABLE subscriptions ADD CONSTRAINT subscriptions_channel_check
    CHECK (channel IN ('webhook', 'email', 'sms'));
ALTER TABLE subscriptions ALTER COLUMN url DROP NOT NULL, ALTER COLUMN secrets DROP NOT NULL;
ALTER TABLE subscriptions ADD COLUMN address text, ADD COLUMN locale text NOT NULL DEFAULT 'zh-CN';
ALTER TABLE subscriptions ADD CONSTRAINT subscriptions_target CHECK (
    CASE channel WHEN 'webhook' THEN url IS NOT NULL AND secrets IS NOT NULL
                 ELSE address IS NOT NULL AND url IS NULL AND secrets IS NULL END);

-- A department's feed topic is on unless switched off here.
CREATE TABLE department_feeds (
    department  text PRIMARY KEY,
    enabled     boolean NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- E-mails to residents have a subject of their own (SMS texts have none).
ALTER TABLE resident_messages ADD COLUMN subject text;
