-- The homepage schema the site reads (PostgreSQL). Applied in order by
-- recsys.publish.db.apply_migrations; each file runs once (homepage.schema_migrations).
CREATE SCHEMA IF NOT EXISTS homepage;

-- One row per publish attempt. run_key = '<logical date>/<run_id>/v<version>'.
CREATE TABLE IF NOT EXISTS homepage.runs (
    run_key        text PRIMARY KEY,
    logical_date   date NOT NULL,
    run_id         text NOT NULL,
    version        integer NOT NULL,
    slates_table   text NOT NULL,
    fallback_table text NOT NULL,
    status         text NOT NULL CHECK (status IN
                   ('loading', 'loaded', 'published', 'superseded', 'failed', 'dropped')),
    users          bigint,
    segments       integer,
    metrics        jsonb,
    manifest       jsonb,
    message        text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    published_at   timestamptz
);
CREATE INDEX IF NOT EXISTS runs_by_status_date ON homepage.runs (status, logical_date DESC);

-- Empty tables so that the view and the function exist (and answer) before the first
-- publish: the site never sees a missing relation.
CREATE TABLE IF NOT EXISTS homepage.slates_empty (user_id text PRIMARY KEY, sections jsonb NOT NULL);
CREATE TABLE IF NOT EXISTS homepage.fallback_empty (segment text PRIMARY KEY, sections jsonb NOT NULL);

DO $$
BEGIN
    IF to_regclass('homepage.current') IS NULL THEN
        EXECUTE 'CREATE VIEW homepage.current AS SELECT user_id, sections, NULL::text AS run_key FROM homepage.slates_empty';
    END IF;
    IF to_regclass('homepage.current_fallback') IS NULL THEN
        EXECUTE 'CREATE VIEW homepage.current_fallback AS SELECT segment, sections, NULL::text AS run_key FROM homepage.fallback_empty';
    END IF;
END $$;

-- One indexed lookup per page view: the user's own homepage, else the segment's, else
-- the 'all' segment. Returns NULL only before the first publish.
CREATE OR REPLACE FUNCTION homepage.get_homepage(p_user_id text, p_segment text DEFAULT 'all')
RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT COALESCE(
        (SELECT jsonb_build_object('user_id', c.user_id, 'kind', 'personal', 'run_key', c.run_key,
                                   'sections', c.sections)
           FROM homepage.current c WHERE c.user_id = p_user_id),
        (SELECT jsonb_build_object('user_id', p_user_id, 'kind', 'segment', 'segment', f.segment,
                                   'run_key', f.run_key, 'sections', f.sections)
           FROM homepage.current_fallback f WHERE f.segment = p_segment),
        (SELECT jsonb_build_object('user_id', p_user_id, 'kind', 'segment', 'segment', f.segment,
                                   'run_key', f.run_key, 'sections', f.sections)
           FROM homepage.current_fallback f WHERE f.segment = 'all')
    )
$$;
