-- The lease looks up due deliveries per subscription only. With this older index (due time
-- alone) still there, the planner walked every due delivery once per subscription: 0.9 s per
-- lease with 1,000 subscriptions and 2,000 due deliveries, against ~1 ms on the other index.
DROP INDEX deliveries_due;
