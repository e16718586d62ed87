-- When a resolved case closes unless the resident verifies or reopens it first (the
-- resolution's `closes_at`, from GRIDDISPATCH_INTAKE__VERIFY_WINDOW_S). Shown while resolved.
ALTER TABLE cases ADD COLUMN closes_at timestamptz;
