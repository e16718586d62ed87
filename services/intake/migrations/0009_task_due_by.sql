-- A grid task's own deadline: every grid's case is to be resolved by then (null: the
-- category's deadlines).
ALTER TABLE tasks ADD COLUMN due_by timestamptz;
