-- 002: the one-row pointer to the served version (PostgreSQL's homepage.live). SQLite
-- still repoints its views (one writer at a time, readers see the old or the new view),
-- but the rollback-wins rule and the serving run id read this row as on PostgreSQL.
CREATE TABLE IF NOT EXISTS homepage_live (
    singleton            INTEGER PRIMARY KEY CHECK (singleton = 1),
    run_key              TEXT,
    generation           INTEGER NOT NULL DEFAULT 0,
    rollback_generation  INTEGER NOT NULL DEFAULT 0,
    changed_by           TEXT,
    changed_at           TEXT
);
INSERT OR IGNORE INTO homepage_live (singleton) VALUES (1);
UPDATE homepage_live SET run_key = (SELECT run_key FROM homepage_runs WHERE status = 'published'
                                     ORDER BY published_at DESC, run_key DESC LIMIT 1),
                         changed_by = 'migration';
