-- Retention (shared/retention.py, services/notifier/retention.py): residents' contacts are
-- erased after the retention period counted from their case's closing, their sent messages
-- deleted after it; delivered webhooks and messages go after the dedup period.
ALTER TABLE cases ADD COLUMN closed_at timestamptz;
CREATE INDEX residents_contact_kept ON residents (case_id)
    WHERE email IS NOT NULL OR phone IS NOT NULL;
CREATE INDEX resident_messages_kept ON resident_messages (send_after) WHERE state <> 'pending';
CREATE INDEX deliveries_done ON deliveries (created_at) WHERE state IN ('delivered', 'disabled');
