-- Retention (shared/retention.py): lifecycle events already folded are forgotten after the
-- dedup period. BRIN: the rows come in time order.
CREATE INDEX seen_events_age ON seen_events USING brin (seen_at);
