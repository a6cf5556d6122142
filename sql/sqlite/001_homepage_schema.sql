-- The homepage schema for the embedded SQLite default. SQLite has no schemas, jsonb,
-- roles or SQL functions: names carry a homepage_ prefix, sections are JSON text, and
-- get_homepage is recsys.publish.db.get_homepage (same fallback order as PostgreSQL).
CREATE TABLE IF NOT EXISTS homepage_runs (
    run_key        TEXT PRIMARY KEY,
    logical_date   TEXT NOT NULL,
    run_id         TEXT NOT NULL,
    version        INTEGER NOT NULL,
    slates_table   TEXT NOT NULL,
    fallback_table TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN
                   ('loading', 'loaded', 'published', 'superseded', 'failed', 'dropped')),
    users          INTEGER,
    segments       INTEGER,
    metrics        TEXT,
    manifest       TEXT,
    message        TEXT,
    created_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    published_at   TEXT
);
CREATE INDEX IF NOT EXISTS homepage_runs_by_status_date ON homepage_runs (status, logical_date);
CREATE TABLE IF NOT EXISTS homepage_slates_empty (user_id TEXT PRIMARY KEY, sections TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS homepage_fallback_empty (segment TEXT PRIMARY KEY, sections TEXT NOT NULL);
CREATE VIEW IF NOT EXISTS homepage_current AS
    SELECT user_id, sections, NULL AS run_key FROM homepage_slates_empty;
CREATE VIEW IF NOT EXISTS homepage_current_fallback AS
    SELECT segment, sections, NULL AS run_key FROM homepage_fallback_empty;
