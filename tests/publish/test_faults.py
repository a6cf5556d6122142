"""Issue 8: the publish process is killed (SIGKILL) at three points against the real
PostgreSQL server; each time the site keeps serving one complete version and the next
run succeeds. The nightly login used here owns its database but may not create roles
(item 3: roles belong to the deployment, not to every publish)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import psycopg2
import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT, RUN_DATE, tiny_overrides
from tests.publish.test_db import _pg_available

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

PUBLISH = """
import json, logging, sys
from recsys.config import load_config, parse_date
from recsys.pipeline import run_stage
logging.basicConfig(level=logging.DEBUG)
cfg = load_config(overrides=json.loads(sys.argv[1]), environ={})
print(json.dumps(run_stage("publish", cfg, parse_date(sys.argv[2]))))
"""
# The nightly login's URL carries this password (trust auth ignores it): it must not be
# written anywhere, neither in the run directory, nor in the database, nor in logs.
PLANTED = "PLANTED-s3cret-4f1e"


def _admin():
    c = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    c.autocommit = True
    return c


@pytest.fixture()
def nightly_db():
    """A database owned by a login without CREATEROLE; the site's reader role and login
    are created by the 'deployment' (this fixture, as an administrator)."""
    if not _pg_available():
        pytest.skip("PostgreSQL on 127.0.0.1:5432 is not reachable")
    tag = uuid.uuid4().hex[:8]
    nightly, site, name = f"nightly_{tag}", f"site_{tag}", f"recsys_fault_{tag}"
    admin = _admin()
    cur = admin.cursor()
    cur.execute(f"CREATE ROLE {nightly} LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB")
    cur.execute(f"CREATE ROLE {site} LOGIN")
    cur.execute(f"CREATE DATABASE {name} OWNER {nightly}")
    yield {"db": name, "nightly": nightly, "site": site,
           "url": f"postgresql://{nightly}:{PLANTED}@127.0.0.1:5432/{name}"}  # fmt: skip
    cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    cur.execute(f"DROP ROLE IF EXISTS {nightly}")
    cur.execute(f"DROP ROLE IF EXISTS {site}")
    admin.close()


def _publish(cfg_over: dict, tmp_path, pause_at: str | None = None) -> dict | None:
    """Run the publish stage in its own process; with pause_at, SIGKILL it there."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    marker = tmp_path / f"paused-{uuid.uuid4().hex[:6]}"
    if pause_at:
        env.update(RECSYS_PAUSE_AT=pause_at, RECSYS_PAUSE_FILE=str(marker))
    args = [sys.executable, "-c", PUBLISH, json.dumps(cfg_over), RUN_DATE.isoformat()]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not pause_at:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-4000:]
        assert PLANTED not in out + err, "the database password reached the logs"
        return json.loads(out.strip().splitlines()[-1])
    deadline = time.time() + 300
    while not marker.exists():
        assert proc.poll() is None, f"publish ended before {pause_at}: {proc.communicate()[1][-4000:]}"
        assert time.time() < deadline, f"publish never reached {pause_at}"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    return None


def _site_view(dbinfo: dict, user: str) -> tuple[str, int, int]:
    """What the site sees: the user's page's run_key, and (distinct versions, rows) in
    homepage.current (one complete version)."""
    c = psycopg2.connect(host="127.0.0.1", port=5432, user=dbinfo["site"], dbname=dbinfo["db"])
    try:
        cur = c.cursor()
        cur.execute("SELECT homepage.get_homepage(%s)", (user,))
        page = cur.fetchone()[0]
        assert page["kind"] == "personal" and page["sections"][0]["items"], page
        cur.execute("SELECT count(DISTINCT run_key), count(*) FROM homepage.current")
        versions, rows = cur.fetchone()
        return page["run_key"], versions, rows
    finally:
        c.close()


def _statuses(dbinfo: dict) -> dict[str, str]:
    c = psycopg2.connect(host="127.0.0.1", port=5432, user=dbinfo["nightly"], dbname=dbinfo["db"])
    try:
        cur = c.cursor()
        cur.execute("SELECT run_key, status FROM homepage.runs")
        return dict(cur.fetchall())
    finally:
        c.close()


def test_publish_killed_at_three_points_never_breaks_the_site(tiny_run, tmp_path, nightly_db):
    cfg, _ = tiny_run
    over = tiny_overrides(cfg.paths.data_root, cfg.paths.work_root)
    over["publish"] = {"database_url": nightly_db["url"], "keep_versions": 1}
    slates = ROOT / cfg.paths.work_root / "runs" / RUN_DATE.isoformat() / "main" / "slates" / "slates.parquet"
    users = pq.read_table(slates, columns=["user_id"]).column(0).to_pylist()
    user, d = users[0], RUN_DATE.isoformat()

    roles_before = _count_roles()
    first = _publish(over, tmp_path)  # migrations + load + switch as the unprivileged nightly login
    assert first["switched"] and _count_roles() == roles_before  # item 3: no role created
    _deploy_reader(nightly_db)  # the deployment grants the site its role, once
    _publish(over, tmp_path)
    assert _site_view(nightly_db, user) == (f"{d}/main/v2", 1, len(users))

    _publish(over, tmp_path, pause_at="publish.copy")  # killed inside the load transaction
    assert _site_view(nightly_db, user) == (f"{d}/main/v2", 1, len(users))
    assert f"{d}/main/v3" not in _statuses(nightly_db)  # rolled back with its tables

    _publish(over, tmp_path, pause_at="publish.before_switch")  # loaded, never switched
    assert _site_view(nightly_db, user) == (f"{d}/main/v2", 1, len(users))
    assert _statuses(nightly_db)[f"{d}/main/v3"] == "loaded"

    info = _publish(over, tmp_path)  # the next run succeeds; v1 and v3 are beyond keep=1
    assert info["switched"] and _site_view(nightly_db, user) == (f"{d}/main/v4", 1, len(users))
    assert sorted(info["dropped_versions"]) == [f"{d}/main/v1", f"{d}/main/v3"]

    before = _statuses(nightly_db)
    _publish(over, tmp_path, pause_at="publish.retention")  # killed after its first DROP
    after = _statuses(nightly_db)
    assert _site_view(nightly_db, user) == (f"{d}/main/v5", 1, len(users))
    assert after[f"{d}/main/v2"] == before[f"{d}/main/v2"] == "superseded"  # the drop rolled back
    assert after[f"{d}/main/v4"] == "superseded" and after[f"{d}/main/v5"] == "published"

    info = _publish(over, tmp_path)
    assert info["switched"] and info["dropped_versions"] == [f"{d}/main/v4", f"{d}/main/v2"]
    assert _site_view(nightly_db, user) == (f"{d}/main/v6", 1, len(users))
    _assert_no_secret(nightly_db, ROOT / cfg.paths.work_root)


def _assert_no_secret(dbinfo: dict, work_root) -> None:
    """Issue 8, item 12: manifest.json held the whole config, database URL and password
    included, and publish copied it into homepage.runs.manifest."""
    for f in work_root.rglob("*"):
        if f.is_file():
            assert PLANTED.encode() not in f.read_bytes(), f
    c = psycopg2.connect(host="127.0.0.1", port=5432, user=dbinfo["nightly"], dbname=dbinfo["db"])
    try:
        cur = c.cursor()
        cur.execute("SELECT count(*), count(*) FILTER (WHERE manifest::text LIKE %s OR metrics::text LIKE %s "
                    "OR coalesce(message, '') LIKE %s) FROM homepage.runs", (f"%{PLANTED}%",) * 3)  # fmt: skip
        total, leaked = cur.fetchone()
        cur.execute("SELECT manifest->'config'->'publish'->>'database_url' FROM homepage.runs LIMIT 1")
        stored = cur.fetchone()[0]
    finally:
        c.close()
    assert total > 0 and leaked == 0 and stored.endswith(f"{dbinfo['nightly']}:***@127.0.0.1:5432/{dbinfo['db']}")


def _count_roles() -> int:
    c = _admin()
    try:
        cur = c.cursor()
        cur.execute("SELECT count(*) FROM pg_roles")
        return cur.fetchone()[0]
    finally:
        c.close()


def _deploy_reader(dbinfo: dict) -> None:
    subprocess.run(
        [sys.executable, "-m", "recsys", "db-setup", "--database-url",
         f"postgresql://postgres@127.0.0.1:5432/{dbinfo['db']}", "--grant-to", dbinfo["site"]],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )  # fmt: skip


def _sharded_run_dir(tiny_run, work_root) -> list[str]:
    """The tiny run's pages as three shard parts (the layout a sharded rerank writes),
    judged by a passing metrics.json fingerprinted over exactly these files."""
    import shutil

    import pandas as pd

    from recsys import jsonio, shards
    from recsys.config import load_config
    from recsys.rundir import RunDir

    cfg, _ = tiny_run
    src = RunDir(cfg, RUN_DATE).final
    rd = RunDir(load_config(overrides=tiny_overrides(cfg.paths.data_root, work_root), environ={}), RUN_DATE)
    rd.root.mkdir(parents=True)
    shutil.copy(src / "manifest.json", rd.path("manifest.json"))
    (rd.path("slates")).mkdir()
    shutil.copy(src / "slates" / "fallback.parquet", rd.path("slates", "fallback.parquet"))
    pages = pd.read_parquet(src / "slates" / "slates.parquet")
    part = shards.shard_of(pages["user_id"], 3)
    for i in range(3):
        shards.write_part(pages[part == i], shards.part_path(rd, 3, i, "slates", "slates.parquet"))
    jsonio.write(rd.path("metrics.json"), {"gate": {"passed": True}, "methods": {},
                                           "slates_sha256": rd.slates_fingerprint()})  # fmt: skip
    return pages["user_id"].tolist()


def test_parallel_shard_load_and_a_crash_inside_it(tiny_run, tmp_path, nightly_db):
    """Issue 7, item 5: three shard parts COPY on two connections into the run's table;
    a publish killed during that COPY leaves committed but unattached tables that the
    site never reads, and the next publish reaps them before it loads."""
    cfg, _ = tiny_run
    work = tmp_path / "work"
    users = _sharded_run_dir(tiny_run, work)
    over = tiny_overrides(cfg.paths.data_root, work)
    over["publish"] = {"database_url": nightly_db["url"], "keep_versions": 1, "load_workers": 2}
    d = RUN_DATE.isoformat()
    info = _publish(over, tmp_path)
    assert info["switched"] and info["load_connections"] == 2 and info["users"] == len(users)
    _deploy_reader(nightly_db)
    assert _site_view(nightly_db, users[0]) == (f"{d}/main/v1", 1, len(users))

    _publish(over, tmp_path, pause_at="publish.copy")  # killed with its tables committed
    assert _statuses(nightly_db)[f"{d}/main/v2"] == "loading"
    assert _site_view(nightly_db, users[-1]) == (f"{d}/main/v1", 1, len(users))  # never read by the site

    info = _publish(over, tmp_path)
    st = _statuses(nightly_db)
    assert st[f"{d}/main/v2"] == "failed" and info["run_key"] == f"{d}/main/v3" and info["switched"]
    assert _site_view(nightly_db, users[-1]) == (f"{d}/main/v3", 1, len(users))
    c = psycopg2.connect(host="127.0.0.1", port=5432, user=nightly_db["nightly"], dbname=nightly_db["db"])
    try:
        cur = c.cursor()
        cur.execute(
            "SELECT message, to_regclass(slates_table) FROM homepage.runs WHERE run_key = %s", (f"{d}/main/v2",)
        )
        message, table = cur.fetchone()
    finally:
        c.close()
    assert message.startswith("abandoned") and table is None  # reaped: its tables are gone
