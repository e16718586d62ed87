-- The escalation ladder is told: when a case is escalated to a grid leader, a community, a
-- street office or a district, a message goes to the contact the router put on the case. Each
-- such contact becomes a subscription of its own kind (made on its first escalation), so its
-- messages are retried, dead-lettered and replayed as every other, and an operator may switch
-- one off.
ALTER TABLE subscriptions DROP CONSTRAINT subscriptions_owner_kind_check;
ALTER TABLE subscriptions ADD CONSTRAINT subscriptions_owner_kind_check
    CHECK (owner_kind IN ('department', 'worker', 'ladder'));
CREATE UNIQUE INDEX subscriptions_ladder_address ON subscriptions (channel, address)
    WHERE owner_kind = 'ladder';
