-- 003 (issue 7, item 6): the page-view lookup with a cached plan.
--
-- 001's get_homepage is a LANGUAGE sql function whose body has sub-selects, so it is
-- never inlined and its three queries (over the partitioned views of 002) are planned
-- again on every call: EXPLAIN shows ~0.9 ms of planning for a 0.16 ms execution.
-- PL/pgSQL caches each statement's plan per session (a generic plan after five calls;
-- the live partition is chosen at run time from homepage.live, and attaching or
-- dropping a partition invalidates the cached plan). Measured with pgbench, one
-- client, prepared, 100k users x 2 live versions: 0.44-0.50 ms -> 0.15-0.18 ms per call
-- (a bare prepared SELECT from homepage.current: 0.11 ms; SELECT 1: 0.05 ms).
--
-- Same signature, same result, same fallback order. A STABLE function runs every
-- statement on the calling query's snapshot, so the personal lookup and the fallbacks
-- still see one pointer (one version), as the single statement of 001 did.
-- CREATE OR REPLACE keeps the EXECUTE grant to homepage_reader.
CREATE OR REPLACE FUNCTION homepage.get_homepage(p_user_id text, p_segment text DEFAULT 'all')
RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    page jsonb;
BEGIN
    SELECT jsonb_build_object('user_id', c.user_id, 'kind', 'personal', 'run_key', c.run_key,
                              'sections', c.sections)
      INTO page FROM homepage.current c WHERE c.user_id = p_user_id;
    IF page IS NOT NULL THEN
        RETURN page;
    END IF;
    SELECT jsonb_build_object('user_id', p_user_id, 'kind', 'segment', 'segment', f.segment,
                              'run_key', f.run_key, 'sections', f.sections)
      INTO page FROM homepage.current_fallback f WHERE f.segment = p_segment;
    IF page IS NOT NULL THEN
        RETURN page;
    END IF;
    SELECT jsonb_build_object('user_id', p_user_id, 'kind', 'segment', 'segment', f.segment,
                              'run_key', f.run_key, 'sections', f.sections)
      INTO page FROM homepage.current_fallback f WHERE f.segment = 'all';
    RETURN page;
END
$$;
