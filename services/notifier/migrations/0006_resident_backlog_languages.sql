-- A message kept for a resident whose contact (and so language) is not known yet is kept in
-- every offered language; the contact picks one when it arrives. `body` stays for the rows
-- written before this column (zh-CN).
ALTER TABLE resident_backlog ADD COLUMN bodies jsonb;
