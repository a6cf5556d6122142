"""The PostgreSQL contract (and its embedded SQLite twin): migrations, load, switch,
retention, rollback, lookup.

Every function here takes a SQLAlchemy Connection from its caller and never commits:
the caller decides the transaction boundaries (see recsys.publish.publish). The
publish protocol, and what each step's failure leaves behind:
  tx 1  apply_migrations. Fails: nothing changed (DDL is transactional).
  tx 2  begin_run -> load_tables (COPY, primary key, ANALYZE, ATTACH as a partition)
        -> validate_loaded. Holds only an advisory lock for its (date, run_id), never a
        lock that readers, rollbacks or other runs wait for. Fails or is killed: the
        transaction rolls back, no table and no run row survive; the caller records a
        'failed' row.
        Parallel variant (PostgreSQL, slates in several shard parts): tx 2a begin_run +
        create_tables, committed while the coordinating connection holds a session
        advisory lock on the run's load; tx 2b one COPY per part, on parallel
        connections; tx 2c fallback COPY, finish_tables (key, ATTACH), validate_loaded.
        Fails: abandon (drop the unattached tables, mark 'failed'). Killed: the tables
        are not attached and no view reads them; the next publish's reap_abandoned
        drops them (their lock died with the process).
  tx 3  switch: lock the pointer row homepage.live, refuse (message, no error) when the
        run is not the serving run id, when a rollback happened after the run began, or
        when a newer date is live and force is off; else UPDATE the pointer and mark
        statuses. Readers never wait: they read the pointer under MVCC. Fails or is
        killed: the previous homepage stays served; the run stays 'loaded' (rollback
        can serve it).
  tx 4  apply_retention: drop versions beyond the newest N per run id, never the live one
        or the rollback target; each drop waits at most publish.lock_timeout_ms for
        readers and is deferred to the next night otherwise. Killed: nothing dropped.
Roles are the deployment's (grant_reader, run by an administrator through
`python -m recsys db-setup`), never a nightly publish's.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from recsys import faults, jsonio
from recsys.config import RUN_ID_PATTERN

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"


class PublishError(RuntimeError):
    """Publishing refused or failed; the previous homepage stays served."""


# The URL forms people write for PostgreSQL, mapped to the driver this project pins.
# SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which is not installed, and
# rejects the postgres:// scheme that Heroku-style environments hand out.
_PG_ALIASES = {"postgres", "postgresql", "postgres+psycopg2", "postgresql+psycopg2"}


def normalise_url(url: str) -> str:
    """postgresql://, postgres:// and postgresql+psycopg2:// -> the psycopg2 driver;
    any other URL (sqlite, an explicitly named other driver) is returned unchanged."""
    u = make_url(url)
    if u.drivername in _PG_ALIASES:
        u = u.set(drivername="postgresql+psycopg2")
    return u.render_as_string(hide_password=False)


def make_engine(url: str) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url)

        # pysqlite would autocommit DDL and defer BEGIN; take control so that CREATE VIEW
        # and friends are transactional (the view switch must be atomic here too).
        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn, _rec):  # type: ignore[no-untyped-def]
            dbapi_conn.isolation_level = None
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA busy_timeout=30000")

        @event.listens_for(engine, "begin")
        def _begin(conn):  # type: ignore[no-untyped-def]
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True)


@dataclass(frozen=True)
class Names:
    """Object names per dialect (PostgreSQL schema 'homepage' vs SQLite prefix)."""

    pg: bool

    def q(self, name: str) -> str:
        return f"homepage.{name}" if self.pg else f"homepage_{name}"

    @property
    def runs(self) -> str:
        return self.q("runs")

    @property
    def current(self) -> str:
        return self.q("current")

    @property
    def current_fallback(self) -> str:
        return self.q("current_fallback")


def _driver(conn: Connection) -> Any:
    """The DBAPI connection (psycopg2) under a SQLAlchemy Connection, in its transaction."""
    raw = conn.connection.driver_connection
    assert raw is not None, "the connection is closed"
    return raw


def names_for(conn: Connection) -> Names:
    return Names(pg=conn.dialect.name == "postgresql")


def _statements(sql: str) -> list[str]:
    # PostgreSQL files may hold $$-quoted bodies with semicolons: psycopg2 runs a whole
    # file at once, so only SQLite needs splitting (its files hold no such bodies).
    return [s.strip() for s in re.split(r";\s*\n", sql) if s.strip()]


def apply_migrations(conn: Connection) -> list[str]:
    """Apply sql/<dialect>/NNN_*.sql not yet recorded; returns the versions applied."""
    n = names_for(conn)
    folder = SQL_DIR / ("postgres" if n.pg else "sqlite")
    if n.pg:
        conn.exec_driver_sql("CREATE SCHEMA IF NOT EXISTS homepage")
        # Serialise concurrent migrators (two publishes starting together).
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext('homepage.migrations'))")
    conn.exec_driver_sql(
        f"CREATE TABLE IF NOT EXISTS {n.q('schema_migrations')} (version text PRIMARY KEY, applied_at text)"
    )
    done = {r[0] for r in conn.exec_driver_sql(f"SELECT version FROM {n.q('schema_migrations')}")}
    applied = []
    for f in sorted(folder.glob("*.sql")):
        if f.stem in done:
            continue
        sql = f.read_text()
        if n.pg:
            # Straight to the driver without parameters, so format('%L') stays literal.
            _driver(conn).cursor().execute(sql)
        else:
            for stmt in _statements(sql):
                conn.exec_driver_sql(stmt)
        conn.execute(
            text(f"INSERT INTO {n.q('schema_migrations')} (version, applied_at) VALUES (:v, :t)"),
            {"v": f.stem, "t": dt.datetime.now(dt.UTC).isoformat()},
        )
        applied.append(f.stem)
    return applied


def grant_reader(conn: Connection, role: str, logins: Iterable[str] = ()) -> None:
    """Deployment step (an administrator's connection): create the site's read-only role
    if missing, let it use only the views and the lookup function, and grant it to the
    site's login roles. Never called by a nightly publish (issue 8, item 3)."""
    if not names_for(conn).pg:
        return
    for name in (role, *logins):
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise PublishError(f"role name {name!r} must be a lower-case SQL identifier")
    conn.exec_driver_sql(
        f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') "
        f"THEN CREATE ROLE {role} NOLOGIN; END IF; END $$"
    )
    conn.exec_driver_sql(f"GRANT USAGE ON SCHEMA homepage TO {role}")
    conn.exec_driver_sql(f"GRANT SELECT ON homepage.current, homepage.current_fallback TO {role}")
    conn.exec_driver_sql(f"GRANT EXECUTE ON FUNCTION homepage.get_homepage(text, text) TO {role}")
    for login in logins:
        conn.exec_driver_sql(f"GRANT {role} TO {login}")


def live(conn: Connection, for_update: bool = False) -> dict[str, Any]:
    """The pointer row: run_key served, generation, rollback_generation, changed_by."""
    n = names_for(conn)
    lock = " FOR UPDATE" if n.pg and for_update else ""
    row = (
        conn.execute(text(f"SELECT run_key, generation, rollback_generation, changed_by FROM {n.q('live')}{lock}"))
        .mappings()
        .one()
    )
    return dict(row)


def table_names(logical_date: dt.date, run_id: str, version: int, n: Names) -> tuple[str, str]:
    """The run's two tables. run_id is validated strictly (RUN_ID_PATTERN: lower case,
    digits, '_', at most 32 characters), so distinct runs can never map to one name and
    no name reaches PostgreSQL's 63-byte identifier limit (issue 8, item 5)."""
    if not re.fullmatch(RUN_ID_PATTERN, run_id):
        raise PublishError(f"run_id {run_id!r} does not match {RUN_ID_PATTERN}")
    base = f"{logical_date.strftime('%Y%m%d')}_{run_id}_v{version}"
    if len(f"fallback_{base}") > 63:
        raise PublishError(f"table name for {base} exceeds 63 bytes")
    return n.q(f"slates_{base}"), n.q(f"fallback_{base}")


def begin_run(
    conn: Connection, logical_date: dt.date, run_id: str, manifest: dict[str, Any], metrics: dict[str, Any]
) -> dict[str, Any]:
    """Insert a 'loading' run row with fresh table names; returns the row's keys plus
    live_generation (the pointer's generation when the run began: the switch refuses
    if a rollback came after it)."""
    n = names_for(conn)
    if n.pg:
        # Two publishes of one (date, run_id) take versions one after the other; nothing
        # else (readers, rollbacks, other runs) waits for this lock.
        conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:k))"),
            {"k": f"homepage.run/{logical_date.isoformat()}/{run_id}"},
        )
    version = (
        conn.execute(
            text(f"SELECT COALESCE(MAX(version), 0) FROM {n.runs} WHERE logical_date = :d AND run_id = :r"),
            {"d": logical_date.isoformat(), "r": run_id},
        ).scalar_one()
        + 1
    )
    slates_table, fallback_table = table_names(logical_date, run_id, version, n)
    if n.pg and conn.execute(text("SELECT to_regclass(:t)"), {"t": slates_table}).scalar_one() is not None:
        raise PublishError(f"{slates_table} already exists but no run row names it; drop it by hand")
    row = {
        "run_key": f"{logical_date.isoformat()}/{run_id}/v{version}",
        "logical_date": logical_date.isoformat(),
        "run_id": run_id,
        "version": version,
        "slates_table": slates_table,
        "fallback_table": fallback_table,
        "status": "loading",
        "metrics": jsonio.dumps(metrics),
        "manifest": jsonio.dumps(manifest),
    }
    _insert_run(conn, row)
    return {**row, "live_generation": live(conn)["generation"]}


def _insert_run(conn: Connection, row: dict[str, Any]) -> None:
    n = names_for(conn)
    js = "CAST(:{} AS jsonb)" if n.pg else ":{}"
    conn.execute(
        text(
            f"INSERT INTO {n.runs} (run_key, logical_date, run_id, version, slates_table, fallback_table, "
            "status, metrics, manifest, message) VALUES (:run_key, :logical_date, :run_id, :version, "
            f":slates_table, :fallback_table, :status, {js.format('metrics')}, {js.format('manifest')}, :message)"
        ),
        {"message": None, **{k: v for k, v in row.items() if k != "live_generation"}},
    )


def record_failed(conn: Connection, run: dict[str, Any], message: str) -> None:
    """After a load transaction rolled back: keep a 'failed' row so operators see it."""
    _insert_run(conn, {**run, "status": "failed", "message": message[:2000]})


def copy_rows(conn: Connection, table: str, cols: tuple[str, str], rows: Iterable[tuple[str, str]]) -> int:
    n = names_for(conn)
    count = 0
    if n.pg:
        # COPY through the driver connection (psycopg2) inside the caller's transaction.
        cur = _driver(conn).cursor()
        buf = io.StringIO()
        w = csv.writer(buf)
        for r in rows:
            w.writerow(r)
            count += 1
            if buf.tell() > 8 << 20:  # stream in ~8 MB chunks
                buf.seek(0)
                cur.copy_expert(f"COPY {table} ({cols[0]}, {cols[1]}) FROM STDIN WITH (FORMAT csv)", buf)
                faults.checkpoint("publish.copy")
                buf = io.StringIO()
                w = csv.writer(buf)
        buf.seek(0)
        cur.copy_expert(f"COPY {table} ({cols[0]}, {cols[1]}) FROM STDIN WITH (FORMAT csv)", buf)
        faults.checkpoint("publish.copy")
        return count
    batch: list[dict[str, str]] = []
    stmt = text(f"INSERT INTO {table} ({cols[0]}, {cols[1]}) VALUES (:a, :b)")
    for a, b in rows:
        batch.append({"a": a, "b": b})
        count += 1
        if len(batch) >= 5000:
            conn.execute(stmt, batch)
            batch = []
    if batch:
        conn.execute(stmt, batch)
    return count


def load_tables(
    conn: Connection, run: dict[str, Any], slates: Iterable[tuple[str, str]], fallbacks: Iterable[tuple[str, str]]
) -> dict[str, int]:
    """Create the run's two tables, bulk-load them, then build keys and statistics
    (after the load: building a primary key once is faster than maintaining it). On
    PostgreSQL each table then becomes a partition of homepage.slates / .fallback: its
    run_key column is a constant default plus a CHECK, so ATTACH needs no scan (see
    finish_tables for why the column is added after the load)."""
    create_tables(conn, run)
    users = copy_rows(conn, run["slates_table"], ("user_id", "sections"), slates)
    segs = copy_rows(conn, run["fallback_table"], ("segment", "sections"), fallbacks)
    finish_tables(conn, run)
    return {"users": users, "segments": segs}


def create_tables(conn: Connection, run: dict[str, Any]) -> None:
    n = names_for(conn)
    st, ft = run["slates_table"], run["fallback_table"]
    if n.pg:
        conn.exec_driver_sql(f"CREATE TABLE {st} (user_id text NOT NULL, sections jsonb NOT NULL)")
        conn.exec_driver_sql(f"CREATE TABLE {ft} (segment text NOT NULL, sections jsonb NOT NULL)")
    else:
        conn.exec_driver_sql(f"CREATE TABLE {st} (user_id TEXT NOT NULL, sections TEXT NOT NULL)")
        conn.exec_driver_sql(f"CREATE TABLE {ft} (segment TEXT NOT NULL, sections TEXT NOT NULL)")


def finish_tables(conn: Connection, run: dict[str, Any]) -> None:
    """Keys, statistics, and (PostgreSQL) ATTACH as partitions; readers still see the
    live version until the switch moves the pointer."""
    n = names_for(conn)
    st, ft = run["slates_table"], run["fallback_table"]
    if n.pg:
        key = run["run_key"].replace("'", "''")
        # The partition key, added after the COPY: a constant default on existing rows
        # is catalog metadata (pg_attribute.attmissingval), not ~50 bytes in every row,
        # as it was when the COPY filled it in. Its CHECK is verified by one read scan.
        for table in (st, ft):
            conn.exec_driver_sql(
                f"ALTER TABLE {table} ADD COLUMN run_key text NOT NULL DEFAULT '{key}' CHECK (run_key = '{key}')"
            )
        conn.exec_driver_sql(f"ALTER TABLE {st} ADD PRIMARY KEY (user_id)")
        conn.exec_driver_sql(f"ALTER TABLE {ft} ADD PRIMARY KEY (segment)")
        conn.exec_driver_sql(f"ANALYZE {st}")
        conn.exec_driver_sql(f"ANALYZE {ft}")
        conn.exec_driver_sql(f"ALTER TABLE homepage.slates ATTACH PARTITION {st} FOR VALUES IN ('{key}')")
        conn.exec_driver_sql(f"ALTER TABLE homepage.fallback ATTACH PARTITION {ft} FOR VALUES IN ('{key}')")
    else:
        conn.exec_driver_sql(f"CREATE UNIQUE INDEX {st}_pk ON {st} (user_id)")
        conn.exec_driver_sql(f"CREATE UNIQUE INDEX {ft}_pk ON {ft} (segment)")
        conn.exec_driver_sql(f"ANALYZE {st}")


# ---- the parallel load (PostgreSQL, several shard parts) ---------------------------------
def _load_key(run_key: str) -> str:
    return f"homepage.load/{run_key}"


def hold_load_lock(conn: Connection, run: dict[str, Any]) -> None:
    """Session-level advisory lock on the run's load, held by the publishing process's
    coordinating connection until it closes: while it is held the run's committed
    'loading' tables belong to a live publish; once the process dies, reap_abandoned
    may drop them."""
    conn.execute(text("SELECT pg_advisory_lock(hashtext(:k))"), {"k": _load_key(run["run_key"])})


def reap_abandoned(conn: Connection) -> list[str]:
    """Runs left 'loading' by a parallel load whose process died (no one holds their load
    lock): drop their unattached tables and mark them failed. Returns their run keys."""
    n = names_for(conn)
    if not n.pg:
        return []
    rows = conn.execute(text(f"SELECT run_key, slates_table, fallback_table FROM {n.runs} WHERE status = 'loading'"))
    reaped = []
    for key, st, ft in rows.fetchall():
        if not conn.execute(text("SELECT pg_try_advisory_xact_lock(hashtext(:k))"), {"k": _load_key(key)}).scalar_one():
            continue  # a live publish is loading it
        abandon(conn, {"run_key": key, "slates_table": st, "fallback_table": ft},
                "abandoned: the publishing process died during its parallel load; its tables were dropped")  # fmt: skip
        reaped.append(key)
    return reaped


def abandon(conn: Connection, run: dict[str, Any], message: str) -> None:
    """A parallel load that failed: drop its (never attached) tables, mark it failed."""
    n = names_for(conn)
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {run['slates_table']}, {run['fallback_table']}")
    conn.execute(
        text(f"UPDATE {n.runs} SET status = 'failed', message = :m WHERE run_key = :k"),
        {"m": message[:2000], "k": run["run_key"]},
    )


def current_published(conn: Connection) -> dict[str, Any] | None:
    n = names_for(conn)
    row = (
        conn.execute(
            text(
                f"SELECT run_key, logical_date, users, slates_table, fallback_table FROM {n.runs} "
                "WHERE status = 'published' ORDER BY published_at DESC, run_key DESC LIMIT 1"
            )
        )
        .mappings()
        .first()
    )
    return dict(row) if row else None


def validate_loaded(conn: Connection, run: dict[str, Any], expected: dict[str, int], min_ratio: float) -> None:
    """Counts in the tables equal what was sent; not a collapse vs the live homepage."""
    users = conn.execute(text(f"SELECT COUNT(*) FROM {run['slates_table']}")).scalar_one()
    segs = conn.execute(text(f"SELECT COUNT(*) FROM {run['fallback_table']}")).scalar_one()
    if users != expected["users"] or segs != expected["segments"]:
        raise PublishError(f"loaded {users} users / {segs} segments, expected {expected}")
    if (
        segs == 0
        or conn.execute(text(f"SELECT COUNT(*) FROM {run['fallback_table']} WHERE segment = 'all'")).scalar_one() != 1
    ):
        raise PublishError("the fallback table has no 'all' segment: users without history would see nothing")
    live = current_published(conn)
    if live and live["users"] and users < min_ratio * live["users"]:
        raise PublishError(
            f"{users} users is below {min_ratio:.0%} of the live homepage's {live['users']} "
            f"(publish.min_users_ratio_vs_previous); refusing to publish a collapsed run"
        )
    n = names_for(conn)
    conn.execute(
        text(f"UPDATE {n.runs} SET status = 'loaded', users = :u, segments = :s WHERE run_key = :k"),
        {"u": users, "s": segs, "k": run["run_key"]},
    )


def _point(conn: Connection, run: dict[str, Any], by: str) -> None:
    """Serve run: on PostgreSQL one UPDATE of the pointer row (the views follow it); on
    SQLite the views are repointed too (SQLite has one writer and no partitions)."""
    n = names_for(conn)
    if not n.pg:
        key = run["run_key"].replace("'", "''")
        for view, table, col in ((n.current, run["slates_table"], "user_id"),
                                 (n.current_fallback, run["fallback_table"], "segment")):  # fmt: skip
            conn.exec_driver_sql(f"DROP VIEW IF EXISTS {view}")
            conn.exec_driver_sql(f"CREATE VIEW {view} AS SELECT {col}, sections, '{key}' AS run_key FROM {table}")
    rollback_gen = "generation + 1" if by == "rollback" else "rollback_generation"
    conn.execute(
        text(
            f"UPDATE {n.q('live')} SET run_key = :k, generation = generation + 1, "
            f"rollback_generation = {rollback_gen}, changed_by = :by, changed_at = :t"
        ),
        {"k": run["run_key"], "by": by, "t": _now()},
    )


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def _refuse(conn: Connection, run: dict[str, Any], msg: str) -> tuple[bool, str]:
    n = names_for(conn)
    conn.execute(text(f"UPDATE {n.runs} SET message = :m WHERE run_key = :k"), {"m": msg, "k": run["run_key"]})
    return False, msg


def switch(
    conn: Connection, run: dict[str, Any], force: bool = False, serving_run_id: str = "main"
) -> tuple[bool, str]:
    """Make run the served homepage. Refused, with the reason recorded on the run row:
    a run_id other than the serving one (an experiment: loaded for preview and rollback
    only), a rollback after this run began (the operator's rollback wins), or a newer
    logical date live (backfill guard) unless force. Returns (switched, message)."""
    n = names_for(conn)
    lv = live(conn, for_update=True)  # serialises switches and rollbacks; readers never wait
    if run["run_id"] != serving_run_id:
        return _refuse(conn, run, f"loaded, not switched: run_id {run['run_id']!r} is not the serving run id "
                                  f"{serving_run_id!r} (publish.serving_run_id); preview or roll back to it")  # fmt: skip
    if lv["rollback_generation"] > run.get("live_generation", lv["generation"]):
        return _refuse(conn, run, f"not switched: the homepage was rolled back to {lv['run_key']} after this run "
                                  "began; the rollback wins (roll back to this run to serve it)")  # fmt: skip
    current = current_published(conn)
    if current and str(current["logical_date"]) > run["logical_date"] and not force:
        return _refuse(conn, run, f"not switched: the live homepage is for {current['logical_date']} "
                                  f"({current['run_key']}), newer than {run['logical_date']}; the tables are kept for "
                                  "rollback (set publish.force to replace it)")  # fmt: skip
    _point(conn, run, "publish")
    conn.execute(text(f"UPDATE {n.runs} SET status = 'superseded' WHERE status = 'published'"))
    conn.execute(
        text(f"UPDATE {n.runs} SET status = 'published', published_at = :t, message = :m WHERE run_key = :k"),
        {"t": _now(), "m": "published" + (" (forced)" if force and current else ""), "k": run["run_key"]},
    )
    return True, f"published {run['run_key']}"


def _is_lock_timeout(e: OperationalError) -> bool:
    return getattr(e.orig, "pgcode", None) == "55P03"


def apply_retention(conn: Connection, keep: int, lock_timeout_ms: int = 50) -> tuple[list[str], list[str]]:
    """Drop the tables of versions beyond the newest `keep` of each run id; never the
    live one nor the rollback target (the version served before it), whatever keep is.
    A drop waits at most lock_timeout_ms for readers (a reader idle in a transaction
    holds its lock); it is then deferred to the next night. Returns (dropped, deferred)."""
    n = names_for(conn)
    rows = (
        conn.execute(
            text(
                f"SELECT run_key, run_id, status, slates_table, fallback_table FROM {n.runs} "
                "WHERE status IN ('published', 'superseded', 'loaded') "
                "ORDER BY logical_date DESC, version DESC"
            )
        )
        .mappings()
        .all()
    )
    protected = {r["run_key"] for r in rows if r["status"] == "published"} | _rollback_target(conn)
    if n.pg:
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{int(lock_timeout_ms)}ms'")
    kept: dict[str, int] = {}
    dropped, deferred = [], []
    for r in rows:
        kept[r["run_id"]] = kept.get(r["run_id"], 0) + 1
        if r["run_key"] in protected or kept[r["run_id"]] <= keep:
            continue
        try:
            with conn.begin_nested():
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {r['slates_table']}")
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {r['fallback_table']}")
                conn.execute(text(f"UPDATE {n.runs} SET status = 'dropped' WHERE run_key = :k"), {"k": r["run_key"]})
        except OperationalError as e:
            if not _is_lock_timeout(e):
                raise
            deferred.append(r["run_key"])
            continue
        dropped.append(r["run_key"])
        faults.checkpoint("publish.retention")
    return dropped, deferred


def _rollback_target(conn: Connection) -> set[str]:
    n = names_for(conn)
    row = conn.execute(
        text(
            f"SELECT run_key FROM {n.runs} WHERE status = 'superseded' AND published_at IS NOT NULL "
            "ORDER BY published_at DESC, run_key DESC LIMIT 1"
        )
    ).first()
    return {row[0]} if row else set()


def rollback(conn: Connection, run_key: str) -> str:
    """Serve a kept earlier version again (instant: a pointer update, no reload). It
    never waits for a publish in flight, and that publish's switch will then refuse."""
    n = names_for(conn)
    live(conn, for_update=True)
    row = conn.execute(text(f"SELECT * FROM {n.runs} WHERE run_key = :k"), {"k": run_key}).mappings().first()
    if row is None:
        raise PublishError(f"no run {run_key!r} in {n.runs}")
    if row["status"] not in ("superseded", "loaded", "published"):
        raise PublishError(f"run {run_key} has status {row['status']}: its tables are gone or never loaded")
    _point(conn, dict(row), "rollback")
    conn.execute(text(f"UPDATE {n.runs} SET status = 'superseded' WHERE status = 'published'"))
    conn.execute(
        text(
            f"UPDATE {n.runs} SET status = 'published', published_at = :t, message = 'rolled back to' WHERE run_key = :k"
        ),
        {"t": _now(), "k": run_key},
    )
    return f"serving {run_key}"


def get_homepage(conn: Connection, user_id: str, segment: str = "all") -> dict[str, Any] | None:
    """The site's lookup: personal homepage, else the segment's, else 'all'."""
    n = names_for(conn)
    if n.pg:
        v = conn.execute(text("SELECT homepage.get_homepage(:u, :s)"), {"u": user_id, "s": segment}).scalar_one()
        return v
    r = conn.execute(text(f"SELECT sections, run_key FROM {n.current} WHERE user_id = :u"), {"u": user_id}).first()
    if r is not None:
        return {"user_id": user_id, "kind": "personal", "run_key": r[1], "sections": json.loads(r[0])}
    for seg in (segment, "all"):
        r = conn.execute(
            text(f"SELECT sections, run_key FROM {n.current_fallback} WHERE segment = :s"), {"s": seg}
        ).first()
        if r is not None:
            return {
                "user_id": user_id,
                "kind": "segment",
                "segment": seg,
                "run_key": r[1],
                "sections": json.loads(r[0]),
            }
    return None


def run_row(conn: Connection, run_key: str) -> dict[str, Any] | None:
    n = names_for(conn)
    row = conn.execute(text(f"SELECT * FROM {n.runs} WHERE run_key = :k"), {"k": run_key}).mappings().first()
    return dict(row) if row else None


def version_page(conn: Connection, run_key: str, user_id: str, segment: str = "all") -> dict[str, Any] | None:
    """What get_homepage would answer if run_key were live (the operator's preview of a
    kept version; reads the run's own tables, so it needs the pipeline's credentials)."""
    run = run_row(conn, run_key)
    if run is None or run["status"] not in ("published", "superseded", "loaded"):
        return None
    r = conn.execute(text(f"SELECT sections FROM {run['slates_table']} WHERE user_id = :u"), {"u": user_id}).first()
    if r is not None:
        return {"user_id": user_id, "kind": "personal", "run_key": run_key, "sections": _json(r[0])}
    for seg in (segment, "all"):
        r = conn.execute(text(f"SELECT sections FROM {run['fallback_table']} WHERE segment = :s"), {"s": seg}).first()
        if r is not None:
            return {"user_id": user_id, "kind": "segment", "segment": seg, "run_key": run_key, "sections": _json(r[0])}
    return None


def segment_pages(conn: Connection, run_key: str) -> dict[str, list[dict[str, Any]]]:
    """segment -> sections of one kept version's fallback pages."""
    run = run_row(conn, run_key)
    if run is None or run["status"] not in ("published", "superseded", "loaded"):
        return {}
    rows = conn.execute(text(f"SELECT segment, sections FROM {run['fallback_table']} ORDER BY segment"))
    return {seg: _json(sec) for seg, sec in rows}


def _json(v: Any) -> Any:
    return json.loads(v) if isinstance(v, str) else v  # jsonb arrives parsed, SQLite text does not


def list_runs(conn: Connection, limit: int = 20) -> list[dict[str, Any]]:
    n = names_for(conn)
    rows = (
        conn.execute(
            text(
                f"SELECT run_key, logical_date, run_id, status, users, segments, published_at, message, metrics "
                f"FROM {n.runs} "
                "ORDER BY created_at DESC, run_key DESC LIMIT :l"
            ),
            {"l": limit},
        )
        .mappings()
        .all()
    )
    return [dict(r) for r in rows]
