-- A message kept for a resident whose contact (and so language) is not known yet is kept as
-- what to say, not as text: it is rendered in the resident's language when the contact
-- arrives (most cases never have one, so most kept messages are never rendered). `body` stays
-- for the rows written before this column (rendered in zh-CN).
ALTER TABLE resident_backlog ADD COLUMN context jsonb, ALTER COLUMN body DROP NOT NULL;
