-- The names of the catalogue's categories, for the words of messages (`griddispatch catalogue
-- import` writes them; the packaged catalogue's are known without it).
CREATE TABLE categories (
    code       text PRIMARY KEY,
    name       jsonb NOT NULL,                -- {"zh-CN": …, "en": …}
    updated_at timestamptz NOT NULL DEFAULT now()
);
