"""The database contract, on SQLite and on the real PostgreSQL server (127.0.0.1:5432).

The PostgreSQL tests create their own database and reader role and drop both."""

import datetime as dt
import json
import os
import uuid

import pytest
from sqlalchemy import text

from recsys.publish import db

D1, D2 = dt.date(2026, 11, 21), dt.date(2026, 11, 22)
# The bare URL form users write (issue 5): make_engine maps it to the pinned psycopg2.
PG_ADMIN = os.environ.get("RECSYS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _pg_available() -> bool:
    try:
        e = db.make_engine(PG_ADMIN)
        with e.connect() as c:
            c.execute(text("SELECT 1"))
        e.dispose()
        return True
    except Exception:
        return False


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request, tmp_path):
    if request.param == "sqlite":
        e = db.make_engine(f"sqlite:///{tmp_path / 'hp.sqlite'}")
    else:
        e = db.make_engine(request.getfixturevalue("pg_url"))
        with e.begin() as c:  # a clean schema per test
            c.exec_driver_sql("DROP SCHEMA IF EXISTS homepage CASCADE")
    with e.begin() as c:
        db.apply_migrations(c)
    yield e
    e.dispose()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u@h/db", "postgresql+psycopg2://u@h/db"),
        ("postgres://u:p%40ss@h:5433/db", "postgresql+psycopg2://u:p%40ss@h:5433/db"),
        ("postgresql+psycopg2://u@h/db", "postgresql+psycopg2://u@h/db"),
        ("sqlite:////tmp/x.sqlite", "sqlite:////tmp/x.sqlite"),
    ],
)
def test_url_forms_map_to_the_pinned_driver(url, expected):
    """Issue 5: SQLAlchemy maps a bare postgresql:// to psycopg 3, which is not installed."""
    assert db.normalise_url(url) == expected
    assert db.make_engine(url).dialect.driver == ("pysqlite" if url.startswith("sqlite") else "psycopg2")


def page(tag):
    return json.dumps([{"key": "top_picks", "title": "Top picks for you", "items": [{"item_id": tag}]}])


def load(engine, date, tag, users=("u1", "u2"), run_id="main"):
    with engine.begin() as c:
        run = db.begin_run(c, date, run_id, {"m": 1}, {"x": 1})
        sent = db.load_tables(c, run, [(u, page(f"{tag}-{u}")) for u in users], [("all", page(f"{tag}-all"))])
        db.validate_loaded(c, run, sent, 0.5)
    return run


def publish(engine, date, tag, users=("u1", "u2"), force=False, run_id="main"):
    run = load(engine, date, tag, users, run_id)
    with engine.begin() as c:
        switched, _ = db.switch(c, run, force=force)
    return run, switched


def first_item(engine, user, segment="all"):
    with engine.connect() as c:
        p = db.get_homepage(c, user, segment)
    return None if p is None else p["sections"][0]["items"][0]["item_id"]


def test_migrations_idempotent_and_empty_before_first_publish(engine):
    with engine.begin() as c:
        assert db.apply_migrations(c) == []
        assert db.get_homepage(c, "u1") is None


def test_publish_lookup_and_fallback(engine):
    publish(engine, D1, "a")
    assert first_item(engine, "u1") == "a-u1"
    with engine.connect() as c:
        p = db.get_homepage(c, "stranger", "cat:Kitchen")
    assert p["kind"] == "segment" and p["segment"] == "all" and p["run_key"] == "2026-11-21/main/v1"


@pytest.mark.postgres
def test_partition_key_is_catalog_metadata_not_in_every_row(pg_url):
    """The run_key column is added after the COPY, so its constant lives in
    pg_attribute (atthasmissing) and the rows hold only user_id and sections; the SQL
    function still answers the run's key."""
    e = db.make_engine(pg_url)
    try:
        with e.begin() as c:
            c.exec_driver_sql("DROP SCHEMA IF EXISTS homepage CASCADE")
            db.apply_migrations(c)
        run, _ = publish(e, D1, "a")
        with e.connect() as c:
            missing = c.execute(text("SELECT atthasmissing FROM pg_attribute WHERE attrelid = CAST(:t AS regclass) "
                                     "AND attname = 'run_key'"), {"t": run["slates_table"]}).scalar_one()  # fmt: skip
            c.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pageinspect")
            # t_infomask2 & 0x07FF: how many attributes the stored tuple holds.
            natts = c.execute(text("SELECT DISTINCT t_infomask2 & 2047 FROM heap_page_items(get_raw_page(:t, 0))"),
                              {"t": run["slates_table"]}).scalars().all()  # fmt: skip
            served = c.execute(text("SELECT homepage.get_homepage('u1') ->> 'run_key'")).scalar_one()
        assert missing is True
        assert natts == [2]  # user_id and sections; not run_key
        assert served == "2026-11-21/main/v1"
    finally:
        e.dispose()


def test_failed_load_leaves_previous_homepage(engine):
    publish(engine, D1, "a")
    with pytest.raises(db.PublishError), engine.begin() as c:
        run = db.begin_run(c, D2, "main", {}, {})
        sent = db.load_tables(c, run, [("u1", page("b-u1"))], [])  # no 'all' segment: invalid
        db.validate_loaded(c, run, sent, 0.0)
    assert first_item(engine, "u1") == "a-u1"
    with engine.connect() as c:
        assert [r["status"] for r in db.list_runs(c)] == ["published"]  # the rolled-back row is gone


def test_collapse_guard(engine):
    publish(engine, D1, "a", users=[f"u{i}" for i in range(10)])
    with pytest.raises(db.PublishError, match="below"):
        publish(engine, D2, "b", users=["u1"])
    assert first_item(engine, "u1") == "a-u1"


def test_backfill_never_replaces_newer_unless_forced(engine):
    publish(engine, D2, "new")
    _, switched = publish(engine, D1, "old")
    assert not switched and first_item(engine, "u1") == "new-u1"
    _, switched = publish(engine, D1, "old2", force=True)
    assert switched and first_item(engine, "u1") == "old2-u1"


def test_retention_and_rollback(engine):
    r1, _ = publish(engine, D1, "a")
    r2, _ = publish(engine, D2, "b")
    r3, _ = publish(engine, D2, "c")
    with engine.begin() as c:
        dropped, deferred = db.apply_retention(c, keep=2)
    assert dropped == [r1["run_key"]] and deferred == []
    with engine.begin() as c:
        assert db.rollback(c, r2["run_key"]) == f"serving {r2['run_key']}"
    assert first_item(engine, "u1") == "b-u1"
    with pytest.raises(db.PublishError, match="dropped"), engine.begin() as c:
        db.rollback(c, r1["run_key"])
    assert first_item(engine, "u1") == "b-u1"
    with engine.connect() as c:
        statuses = {r["run_key"]: r["status"] for r in db.list_runs(c)}
    assert statuses == {r1["run_key"]: "dropped", r2["run_key"]: "published", r3["run_key"]: "superseded"}


def test_run_ids_that_could_collide_are_refused():
    """Issue 8, item 5: 'Main'/'main', 'a-b'/'a_b' and long run ids used to map to one
    table name (lower-casing, '-' -> '_', 63-byte truncation)."""
    from recsys.config import ConfigError, build_config

    for bad in ("Main", "a-b", "x" * 33, "", "a b"):
        with pytest.raises(ConfigError, match="run_id"):
            build_config({"run_id": bad})
        with pytest.raises(db.PublishError):
            db.table_names(D1, bad, 1, db.Names(pg=True))
    names = {db.table_names(D1, r, 1, db.Names(pg=True)) for r in ("main", "a_b", "x" * 32)}
    assert len(names) == 3 and all(len(t.split(".")[1]) <= 63 for pair in names for t in pair)


def test_keep_one_version_never_drops_the_rollback_target(engine):
    """Issue 8, item 15: keep_versions=1 dropped every version but the live one."""
    r1, _ = publish(engine, D1, "a")
    _r2, _ = publish(engine, D2, "b")
    with engine.begin() as c:
        dropped, _ = db.apply_retention(c, keep=1)
    assert dropped == []
    with engine.begin() as c:
        db.rollback(c, r1["run_key"])
    assert first_item(engine, "u1") == "a-u1"


def test_only_the_serving_run_id_switches(engine):
    """Issue 8, item 6: an experiment run for the same date replaced the live page and
    pushed the rollback target out of keep_versions."""
    main1, _ = publish(engine, D1, "main1")
    _main2, _ = publish(engine, D2, "main2")
    exps = [publish(engine, D2, f"exp{i}", run_id="exp")[0] for i in range(3)]
    assert first_item(engine, "u1") == "main2-u1"
    with engine.connect() as c:
        runs = {r["run_key"]: r for r in db.list_runs(c)}
    assert all(runs[e["run_key"]]["status"] == "loaded" for e in exps)
    assert "not the serving run id" in runs[exps[0]["run_key"]]["message"]
    with engine.begin() as c:
        dropped, _ = db.apply_retention(c, keep=1)
    assert dropped == [exps[1]["run_key"], exps[0]["run_key"]]  # main's rollback target stays
    with engine.begin() as c:
        db.rollback(c, main1["run_key"])
    assert first_item(engine, "u1") == "main1-u1"
    with engine.begin() as c:  # an operator may still serve an experiment on purpose
        db.rollback(c, exps[2]["run_key"])
    assert first_item(engine, "u1") == "exp2-u1"


def _pg_reader(pg_url, **kw):
    import psycopg2

    u = db.make_engine(pg_url).url
    conn = psycopg2.connect(host=u.host, port=u.port, user=u.username, dbname=u.database, **kw)
    return conn


def _pg_engine(pg_url):
    e = db.make_engine(pg_url)
    with e.begin() as c:
        c.exec_driver_sql("DROP SCHEMA IF EXISTS homepage CASCADE")
        db.apply_migrations(c)
    return e


def _in_thread(fn, timeout):
    """Run fn in a thread; returns (finished, result or exception)."""
    import threading

    box = {}

    def target():
        try:
            box["v"] = fn()
        except Exception as e:
            box["v"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    return not t.is_alive(), box.get("v"), t


@pytest.mark.postgres
def test_reader_role_sees_only_views_and_function(pg_url):
    """The lookup is one index probe on the live version's table (2,000 users, so the
    planner would pick a sequential scan if no usable index existed)."""
    e = _pg_engine(pg_url)
    role = f"hp_reader_{uuid.uuid4().hex[:6]}"
    try:
        with e.begin() as c:
            db.grant_reader(c, role)
        users = [f"u{i}" for i in range(2000)]
        publish(e, D1, "a", users=users)
        run, _ = publish(e, D2, "b", users=users)
        with e.begin() as c:
            c.exec_driver_sql(f"SET LOCAL ROLE {role}")
            got = c.execute(text("SELECT homepage.get_homepage('u2')")).scalar_one()
            assert got["sections"][0]["items"][0]["item_id"] == "b-u2" and got["kind"] == "personal"
            assert c.execute(text("SELECT count(*) FROM homepage.current")).scalar_one() == 2000
            plan = "\n".join(
                r[0]
                for r in c.execute(
                    text("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) SELECT * FROM homepage.current WHERE user_id = 'u1'")
                )
            )
            live_table = run["slates_table"].split(".")[1]
            assert f"Index Scan using {live_table}_pkey on {live_table}" in plan, plan
            assert "Seq Scan on slates_" not in plan, plan
            assert "Subplans Removed: 1" in plan or "(never executed)" in plan, plan  # the old version not read
        for forbidden in (run["slates_table"], "homepage.runs", "homepage.slates", "homepage.live"):
            with pytest.raises(Exception, match="permission denied"), e.begin() as c:
                c.exec_driver_sql(f"SET LOCAL ROLE {role}")
                c.exec_driver_sql(f"SELECT * FROM {forbidden}")
    finally:
        with e.begin() as c:
            c.exec_driver_sql("DROP SCHEMA IF EXISTS homepage CASCADE")
            c.exec_driver_sql(f"DROP ROLE IF EXISTS {role}")
        e.dispose()


@pytest.mark.postgres
def test_concurrent_reader_never_sees_missing_homepage(pg_url):
    """A reader polling during five publishes always gets a full homepage, and sees the
    versions in order, from the first to the last (so switches happened while it read)."""
    import threading

    e = _pg_engine(pg_url)
    publish(e, D1, "v0")
    stop, started, bad, seen = threading.Event(), threading.Event(), [], []

    def reader():
        conn = _pg_reader(pg_url)
        conn.autocommit = True
        cur = conn.cursor()
        while True:
            last = stop.is_set()
            cur.execute("SELECT homepage.get_homepage('u1')")
            p = cur.fetchone()[0]
            if p is None or p["kind"] != "personal":
                bad.append(p)
            elif not seen or seen[-1] != p["sections"][0]["items"][0]["item_id"]:
                seen.append(p["sections"][0]["items"][0]["item_id"])
            started.set()
            if last:
                break
        conn.close()

    t = threading.Thread(target=reader)
    t.start()
    assert started.wait(30)
    for i in range(1, 6):
        publish(e, D1 + dt.timedelta(days=i), f"v{i}")
    stop.set()
    t.join(timeout=60)
    e.dispose()
    assert bad == []
    assert seen[0] == "v0-u1" and seen[-1] == "v5-u1" and seen == sorted(seen), seen


@pytest.mark.postgres
def test_switch_never_waits_for_a_reader_idle_in_transaction(pg_url):
    """Issue 8, item 1: CREATE OR REPLACE VIEW waited for an idle-in-transaction reader's
    lock, and every new page view queued behind the switch."""
    e = _pg_engine(pg_url)
    r0, _ = publish(e, D1, "v0")
    _r1, _ = publish(e, D2, "v1")
    idle = _pg_reader(pg_url)
    idle.cursor().execute("SELECT homepage.get_homepage('u1')")  # BEGIN ... then idle, locks held
    fresh = _pg_reader(pg_url, options="-c statement_timeout=2000")
    fresh.autocommit = True
    try:
        done, res, _ = _in_thread(lambda: publish(e, D2 + dt.timedelta(days=1), "v2"), timeout=30)
        assert done and not isinstance(res, Exception), res
        cur = fresh.cursor()
        cur.execute("SELECT homepage.get_homepage('u1')")  # errors if it had to queue 2 s
        assert cur.fetchone()[0]["sections"][0]["items"][0]["item_id"] == "v2-u1"
        # Retention: v0 is beyond keep=1 but the idle reader holds its lock: deferred,
        # neither waiting for the reader nor making new readers queue.
        done, res, _ = _in_thread(lambda: _retention(e, keep=1), timeout=30)
        assert done and res == ([], [r0["run_key"]]), res
        cur.execute("SELECT homepage.get_homepage('u2')")
        assert cur.fetchone()[0]["kind"] == "personal"
    finally:
        idle.close()
        fresh.close()
    assert _retention(e, keep=1) == ([r0["run_key"]], [])  # the next night drops it
    e.dispose()


def _retention(e, keep):
    with e.begin() as c:
        return db.apply_retention(c, keep=keep, lock_timeout_ms=50)


@pytest.mark.postgres
def test_repeatable_read_reader_keeps_its_version(pg_url):
    """Issue 8, item 2: a REPEATABLE READ reader that began before a switch got NULL."""
    import psycopg2.extensions as ext

    e = _pg_engine(pg_url)
    publish(e, D1, "v0")
    rr = _pg_reader(pg_url)
    rr.set_session(isolation_level=ext.ISOLATION_LEVEL_REPEATABLE_READ)
    try:
        cur = rr.cursor()
        cur.execute("SELECT homepage.get_homepage('u1')")
        assert cur.fetchone()[0]["run_key"] == "2026-11-21/main/v1"
        done, res, _ = _in_thread(lambda: publish(e, D2, "v1"), timeout=30)  # no wait for this reader
        assert done and not isinstance(res, Exception), res
        for user, kind in (("u1", "personal"), ("stranger", "segment")):
            cur.execute("SELECT homepage.get_homepage(%s)", (user,))
            p = cur.fetchone()[0]
            assert p is not None and p["kind"] == kind and p["run_key"] == "2026-11-21/main/v1", p
        rr.commit()
        cur.execute("SELECT homepage.get_homepage('u1')")
        assert cur.fetchone()[0]["run_key"] == "2026-11-22/main/v1"
    finally:
        rr.close()
        e.dispose()


@pytest.mark.postgres
def test_rollback_during_a_publish_wins(pg_url):
    """Issue 8, item 7: a rollback waited for the in-flight load, whose switch then
    republished over it."""
    e = _pg_engine(pg_url)
    r0, _ = publish(e, D1, "v0")
    publish(e, D2, "v1")
    loading = e.connect()
    tx = loading.begin()
    run = db.begin_run(loading, D2 + dt.timedelta(days=1), "main", {}, {})
    sent = db.load_tables(loading, run, [("u1", page("v2-u1")), ("u2", page("v2-u2"))], [("all", page("v2-all"))])
    db.validate_loaded(loading, run, sent, 0.5)
    try:

        def do_rollback():
            with e.begin() as c:
                return db.rollback(c, r0["run_key"])

        done, res, _ = _in_thread(do_rollback, timeout=20)
        assert done and res == f"serving {r0['run_key']}", res  # it did not wait for the load
        tx.commit()
    finally:
        loading.close()
    with e.begin() as c:
        switched, msg = db.switch(c, run)
    assert not switched and "rolled back" in msg
    assert first_item(e, "u1") == "v0-u1"
    e.dispose()


@pytest.mark.postgres
def test_two_concurrent_publishes_leave_one_live_version(pg_url):
    """Two nights published at once: both load, the newer date is served, one row is
    'published'."""
    import threading

    e = _pg_engine(pg_url)
    barrier, errors = threading.Barrier(2), []

    def night(date, tag):
        barrier.wait()
        try:
            publish(e, date, tag, users=[f"u{i}" for i in range(500)])
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=night, args=a) for a in ((D1, "old"), (D2, "new"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads) and errors == [], errors
    assert first_item(e, "u1") == "new-u1"
    with e.connect() as c:
        statuses = sorted(r["status"] for r in db.list_runs(c))
        assert db.live(c)["run_key"] == "2026-11-22/main/v1"
    assert statuses in (["published", "superseded"], ["loaded", "published"])
    e.dispose()


@pytest.mark.postgres
def test_migration_002_adopts_a_homepage_served_by_001(pg_url):
    """A deployment on the first schema (views repointed by CREATE OR REPLACE) keeps
    serving the same page, with the same grants, through migration 002; the next
    publish switches through the pointer."""
    e = db.make_engine(pg_url)
    role = f"hp_reader_{uuid.uuid4().hex[:6]}"
    try:
        with e.begin() as c:
            c.exec_driver_sql("DROP SCHEMA IF EXISTS homepage CASCADE")
            c.exec_driver_sql("CREATE SCHEMA homepage")
            c.exec_driver_sql("CREATE TABLE homepage.schema_migrations (version text PRIMARY KEY, applied_at text)")
            c.connection.driver_connection.cursor().execute(
                (db.SQL_DIR / "postgres" / "001_homepage_schema.sql").read_text()
            )
            c.exec_driver_sql("INSERT INTO homepage.schema_migrations VALUES ('001_homepage_schema', 'then')")
            t = "homepage.slates_20261121_main_v1"
            c.exec_driver_sql(f"CREATE TABLE {t} (user_id text PRIMARY KEY, sections jsonb NOT NULL)")
            c.exec_driver_sql(
                "CREATE TABLE homepage.fallback_20261121_main_v1 (segment text PRIMARY KEY, sections jsonb NOT NULL)"
            )
            c.execute(text(f"INSERT INTO {t} VALUES ('u1', CAST(:p AS jsonb))"), {"p": page("old-u1")})
            c.execute(text("INSERT INTO homepage.fallback_20261121_main_v1 VALUES ('all', CAST(:p AS jsonb))"),
                      {"p": page("old-all")})  # fmt: skip
            c.exec_driver_sql(
                "INSERT INTO homepage.runs (run_key, logical_date, run_id, version, slates_table, fallback_table, "
                f"status, users, segments, published_at) VALUES ('2026-11-21/main/v1', '2026-11-21', 'main', 1, "
                f"'{t}', 'homepage.fallback_20261121_main_v1', 'published', 1, 1, now())"
            )
            c.exec_driver_sql(f"CREATE OR REPLACE VIEW homepage.current AS SELECT user_id, sections, "
                              f"'2026-11-21/main/v1'::text AS run_key FROM {t}")  # fmt: skip
            c.exec_driver_sql(
                "CREATE OR REPLACE VIEW homepage.current_fallback AS SELECT segment, sections, "
                "'2026-11-21/main/v1'::text AS run_key FROM homepage.fallback_20261121_main_v1"
            )
            c.exec_driver_sql(f"CREATE ROLE {role} NOLOGIN")
            c.exec_driver_sql(f"GRANT USAGE ON SCHEMA homepage TO {role}")
            c.exec_driver_sql(f"GRANT SELECT ON homepage.current, homepage.current_fallback TO {role}")
        with e.begin() as c:
            assert db.apply_migrations(c) == ["002_live_pointer", "003_get_homepage_plpgsql"]
        with e.begin() as c:
            c.exec_driver_sql(f"SET LOCAL ROLE {role}")
            assert c.execute(text("SELECT sections FROM homepage.current WHERE user_id = 'u1'")).scalar_one()[0][
                "items"][0]["item_id"] == "old-u1"  # fmt: skip
        assert first_item(e, "stranger") == "old-all"
        publish(e, D2, "new")
        assert first_item(e, "u1") == "new-u1"
        with e.begin() as c:
            db.rollback(c, "2026-11-21/main/v1")
        assert first_item(e, "u1") == "old-u1"
    finally:
        with e.begin() as c:
            c.exec_driver_sql("DROP SCHEMA IF EXISTS homepage CASCADE")
            c.exec_driver_sql(f"DROP ROLE IF EXISTS {role}")
        e.dispose()
