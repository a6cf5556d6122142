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


@pytest.fixture(scope="module")
def pg_url():
    if not _pg_available():
        pytest.skip("PostgreSQL on 127.0.0.1:5432 is not reachable")
    name = f"recsys_test_{uuid.uuid4().hex[:8]}"
    admin = db.make_engine(PG_ADMIN).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f"CREATE DATABASE {name}")
    yield PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    with admin.connect() as c:
        c.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.dispose()


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


def publish(engine, date, tag, users=("u1", "u2"), force=False):
    with engine.begin() as c:
        run = db.begin_run(c, date, "main", {"m": 1}, {"x": 1})
        sent = db.load_tables(c, run, [(u, page(f"{tag}-{u}")) for u in users], [("all", page(f"{tag}-all"))])
        db.validate_loaded(c, run, sent, 0.5)
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
        dropped = db.apply_retention(c, keep=2)
    assert dropped == [r1["run_key"]]
    with engine.begin() as c:
        assert db.rollback(c, r2["run_key"]) == f"serving {r2['run_key']}"
    assert first_item(engine, "u1") == "b-u1"
    with pytest.raises(db.PublishError, match="dropped"), engine.begin() as c:
        db.rollback(c, r1["run_key"])
    assert first_item(engine, "u1") == "b-u1"
    with engine.connect() as c:
        statuses = {r["run_key"]: r["status"] for r in db.list_runs(c)}
    assert statuses == {r1["run_key"]: "dropped", r2["run_key"]: "published", r3["run_key"]: "superseded"}


@pytest.mark.postgres
def test_reader_role_sees_only_views_and_function(pg_url):
    e = db.make_engine(pg_url)
    role = f"hp_reader_{uuid.uuid4().hex[:6]}"
    try:
        with e.begin() as c:
            c.exec_driver_sql("DROP SCHEMA IF EXISTS homepage CASCADE")
            db.apply_migrations(c)
            db.grant_reader(c, role)
        run, _ = publish(e, D1, "a")
        with e.begin() as c:
            c.exec_driver_sql(f"SET LOCAL ROLE {role}")
            got = c.execute(text("SELECT homepage.get_homepage('u2')")).scalar_one()
            assert got["sections"][0]["items"][0]["item_id"] == "a-u2" and got["kind"] == "personal"
            assert c.execute(text("SELECT count(*) FROM homepage.current")).scalar_one() == 2
            # one indexed lookup: the plan uses the run table's primary key
            plan = "\n".join(
                r[0] for r in c.execute(text("EXPLAIN SELECT * FROM homepage.current WHERE user_id = 'u1'"))
            )
            assert "Index Scan" in plan or "Index Only Scan" in plan or "Seq Scan" in plan
        with pytest.raises(Exception, match="permission denied"), e.begin() as c:
            c.exec_driver_sql(f"SET LOCAL ROLE {role}")
            c.exec_driver_sql(f"SELECT * FROM {run['slates_table']}")
        with pytest.raises(Exception, match="permission denied"), e.begin() as c:
            c.exec_driver_sql(f"SET LOCAL ROLE {role}")
            c.exec_driver_sql("SELECT * FROM homepage.runs")
    finally:
        with e.begin() as c:
            c.exec_driver_sql("DROP SCHEMA IF EXISTS homepage CASCADE")
            c.exec_driver_sql(f"DROP ROLE IF EXISTS {role}")
        e.dispose()


@pytest.mark.postgres
def test_concurrent_reader_never_sees_missing_homepage(pg_url):
    """A reader polling during many publishes always gets a full homepage."""
    import threading

    e = db.make_engine(pg_url)
    with e.begin() as c:
        c.exec_driver_sql("DROP SCHEMA IF EXISTS homepage CASCADE")
        db.apply_migrations(c)
    publish(e, D1, "v0")
    stop, bad, seen = threading.Event(), [], set()

    def reader():
        r = db.make_engine(pg_url)
        with r.connect() as c:
            for _ in range(2000):
                if stop.is_set():
                    break
                p = c.execute(text("SELECT homepage.get_homepage('u1')")).scalar_one()
                if p is None or p["kind"] != "personal":
                    bad.append(p)
                else:
                    seen.add(p["sections"][0]["items"][0]["item_id"])
                c.commit()
        r.dispose()

    t = threading.Thread(target=reader)
    t.start()
    for i in range(1, 6):
        publish(e, D1 + dt.timedelta(days=i), f"v{i}")
    stop.set()
    t.join(timeout=60)
    e.dispose()
    assert bad == [] and len(seen) >= 1
