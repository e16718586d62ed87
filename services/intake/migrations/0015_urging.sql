-- A resident pressing for their case (催办): how often, and when last (at most once a day).
ALTER TABLE cases ADD COLUMN urged_count int NOT NULL DEFAULT 0,
                  ADD COLUMN last_urged_at timestamptz;
