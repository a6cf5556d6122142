-- 002 (issue 8, items 1-3): a switch that no reader ever waits for.
--
-- 001 repointed the views with CREATE OR REPLACE VIEW, which needs an ACCESS EXCLUSIVE
-- lock on them: one site connection idle in a transaction stalled the switch and every
-- page view queued behind it, and a REPEATABLE READ reader whose snapshot predated the
-- new table got NULL. Now every run's tables are partitions of homepage.slates and
-- homepage.fallback (list-partitioned by run_key; ATTACH takes only SHARE UPDATE
-- EXCLUSIVE on the parent, which readers' ACCESS SHARE does not conflict with), and the
-- views read the partition that the one-row pointer homepage.live names. A switch or a
-- rollback is an UPDATE of that row: readers never wait for it, and a reader's snapshot
-- always sees one consistent pointer, hence one complete version.
CREATE TABLE IF NOT EXISTS homepage.live (
    singleton            boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    run_key              text,
    generation           bigint NOT NULL DEFAULT 0,   -- +1 per switch or rollback
    rollback_generation  bigint NOT NULL DEFAULT 0,   -- generation of the last rollback
    changed_by           text,                        -- publish | rollback | migration
    changed_at           timestamptz
);
INSERT INTO homepage.live (singleton) VALUES (true) ON CONFLICT DO NOTHING;

CREATE TABLE IF NOT EXISTS homepage.slates (
    user_id text NOT NULL, sections jsonb NOT NULL, run_key text NOT NULL
) PARTITION BY LIST (run_key);
CREATE TABLE IF NOT EXISTS homepage.fallback (
    segment text NOT NULL, sections jsonb NOT NULL, run_key text NOT NULL
) PARTITION BY LIST (run_key);

-- Adopt the tables of the versions that 001 kept, and point at the one it served.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT run_key, slates_table, fallback_table FROM homepage.runs
             WHERE status IN ('published', 'superseded', 'loaded') LOOP
        IF to_regclass(r.slates_table) IS NOT NULL AND to_regclass(r.fallback_table) IS NOT NULL THEN
            EXECUTE format('ALTER TABLE %s ADD COLUMN run_key text NOT NULL DEFAULT %L CHECK (run_key = %L)',
                           r.slates_table, r.run_key, r.run_key);
            EXECUTE format('ALTER TABLE homepage.slates ATTACH PARTITION %s FOR VALUES IN (%L)',
                           r.slates_table, r.run_key);
            EXECUTE format('ALTER TABLE %s ADD COLUMN run_key text NOT NULL DEFAULT %L CHECK (run_key = %L)',
                           r.fallback_table, r.run_key, r.run_key);
            EXECUTE format('ALTER TABLE homepage.fallback ATTACH PARTITION %s FOR VALUES IN (%L)',
                           r.fallback_table, r.run_key);
        ELSE
            UPDATE homepage.runs SET status = 'dropped', message = 'tables missing at migration 002'
             WHERE run_key = r.run_key;
        END IF;
    END LOOP;
    UPDATE homepage.live
       SET run_key = (SELECT run_key FROM homepage.runs WHERE status = 'published'
                       ORDER BY published_at DESC NULLS LAST, run_key DESC LIMIT 1),
           changed_by = 'migration', changed_at = now();
END $$;

-- Same columns, same order as 001's views: CREATE OR REPLACE keeps the grants on them.
CREATE OR REPLACE VIEW homepage.current AS
    SELECT s.user_id, s.sections, s.run_key FROM homepage.slates s
     WHERE s.run_key = (SELECT l.run_key FROM homepage.live l);
CREATE OR REPLACE VIEW homepage.current_fallback AS
    SELECT f.segment, f.sections, f.run_key FROM homepage.fallback f
     WHERE f.run_key = (SELECT l.run_key FROM homepage.live l);
DROP TABLE IF EXISTS homepage.slates_empty;
DROP TABLE IF EXISTS homepage.fallback_empty;

-- Roles belong to the deployment (docker/initdb.sql, or `python -m recsys db-setup` run
-- by an administrator), never to a nightly publish. When the deployment has created
-- homepage_reader, the owner of these objects grants it what the site may use.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'homepage_reader') THEN
        GRANT USAGE ON SCHEMA homepage TO homepage_reader;
        GRANT SELECT ON homepage.current, homepage.current_fallback TO homepage_reader;
        GRANT EXECUTE ON FUNCTION homepage.get_homepage(text, text) TO homepage_reader;
    END IF;
END $$;
