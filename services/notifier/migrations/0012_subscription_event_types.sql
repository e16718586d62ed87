-- Which lifecycle events a subscription wants (NULL: every one its channel carries): a duty
-- desk's e-mail only for escalations, a ticketing system's webhook without the progress notes.
ALTER TABLE subscriptions ADD COLUMN event_types text[];
