-- Retention (shared/retention.py, services/intake/retention.py): a closed case's personal data
-- is erased after the retention period and the moment recorded; answers kept for retried
-- Idempotency-Keys are deleted after a day.
ALTER TABLE cases ADD COLUMN personal_data_erased_at timestamptz;
CREATE INDEX cases_personal_data_kept ON cases (updated_at)
    WHERE status = 'closed' AND personal_data_erased_at IS NULL;
CREATE INDEX idempotency_keys_age ON idempotency_keys USING brin (created_at);
