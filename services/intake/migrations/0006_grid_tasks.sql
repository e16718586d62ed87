-- Grid tasks: an operator gives every grid of an area the same task at once. The router makes
-- one case per grid; intake creates each case when its routing (CaseRouted with task_id)
-- arrives, from the task kept here.
CREATE TABLE tasks (
    task_id      text PRIMARY KEY,
    category     text NOT NULL,
    title        text NOT NULL,
    instructions text NOT NULL DEFAULT '',
    area         text NOT NULL,
    grid_kinds   text[] NOT NULL,
    department   text,
    issued_by    text NOT NULL,
    issued_at    timestamptz NOT NULL
);
CREATE INDEX tasks_issued ON tasks (issued_at DESC);
ALTER TABLE cases ADD COLUMN task_id text;
CREATE INDEX cases_task ON cases (task_id) WHERE task_id IS NOT NULL;
