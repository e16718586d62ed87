-- Categories a city's catalogue no longer offers (`griddispatch catalogue import
-- --retire-others`): the routers still route and reroute cases in them, but their departments
-- are free to go from the reference data.
ALTER TABLE categories ADD COLUMN retired_at timestamptz;
