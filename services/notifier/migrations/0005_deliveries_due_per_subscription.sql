-- The sender leases each subscription's due deliveries separately (a fair share per endpoint,
-- so one endpoint's backlog cannot fill the sender); this index serves that lookup.
CREATE INDEX deliveries_due_per_subscription ON deliveries (subscription_id, next_attempt_at)
    WHERE state = 'pending';
