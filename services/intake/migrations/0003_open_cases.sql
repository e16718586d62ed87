-- The open backlog per department (the dashboards' gauge) without scanning closed cases.
CREATE INDEX cases_open ON cases (department) WHERE status NOT IN ('resolved', 'closed');
