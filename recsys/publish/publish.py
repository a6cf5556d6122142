"""The publish stage: owns the transactions around recsys.publish.db's functions."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from sqlalchemy import Engine

from recsys import faults, shards
from recsys.config import Config
from recsys.publish import db
from recsys.rundir import RunDir

log = logging.getLogger(__name__)


def _rows(path, key: str) -> Iterator[tuple[str, str]]:  # type: ignore[no-untyped-def]
    # Stream the parquet (or its shard parts) in batches: a run of millions of users
    # never sits in memory twice.
    for f in shards.part_files(path):
        for batch in pq.ParquetFile(f).iter_batches(batch_size=50_000, columns=[key, "sections"]):
            yield from zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True)


def run_publish(cfg: Config, rd: RunDir) -> dict[str, Any]:
    t0 = time.time()
    metrics_path = rd.require("metrics.json")
    metrics = json.loads(metrics_path.read_text())
    if not metrics.get("gate", {}).get("passed", False):
        raise db.PublishError(f"blocked by the evaluation gate ({metrics_path}); nothing was published")
    slates = rd.require("slates", "slates.parquet")
    fallback = rd.require("slates", "fallback.parquet")
    if metrics.get("slates_sha256") != rd.slates_fingerprint():
        raise db.PublishError(
            f"the slates in {rd.path('slates')} changed after evaluate judged them (or {metrics_path} predates "
            "fingerprints); re-run evaluate before publishing"
        )
    expected = {
        "users": shards.num_rows(slates),
        "segments": shards.num_rows(fallback),
    }
    manifest = rd.read_manifest()
    slim_metrics = {k: metrics.get(k) for k in ("methods", "gate", "users_evaluated", "holdout_days")}
    url = cfg.database_url()
    engine = db.make_engine(url)
    parts = shards.part_files(slates)
    workers = min(len(parts), cfg.publish.load_workers or os.cpu_count() or 1)
    parallel = engine.dialect.name == "postgresql" and workers > 1
    try:
        with engine.begin() as conn:
            applied = db.apply_migrations(conn)
            reaped = db.reap_abandoned(conn)
        if reaped:
            log.warning("publish: dropped the tables of abandoned loads %s", reaped)
        args = (engine, cfg, rd, manifest, slim_metrics, slates, fallback, expected)
        run = _load_parallel(*args, workers) if parallel else _load_single(*args)
        t_load = time.time() - t0
        faults.checkpoint("publish.before_switch")
        with engine.begin() as conn:
            switched, message = db.switch(conn, run, cfg.publish.force, cfg.publish.serving_run_id)
        with engine.begin() as conn:
            dropped, deferred = db.apply_retention(conn, cfg.publish.keep_versions, cfg.publish.lock_timeout_ms)
        if deferred:
            log.warning("publish: readers held locks on %s; their drop is deferred to the next night", deferred)
    finally:
        engine.dispose()
    info = {
        "database": engine.url.render_as_string(hide_password=True),
        "run_key": run["run_key"],
        "slates_table": run["slates_table"],
        "users": expected["users"],
        "segments": expected["segments"],
        "switched": switched,
        "message": message,
        "migrations_applied": applied,
        "dropped_versions": dropped,
        "deferred_drops": deferred,
        "load_connections": workers if parallel else 1,
        "rows_per_s": round(expected["users"] / max(t_load, 1e-9), 1),
        "seconds": round(time.time() - t0, 1),
    }
    log.info("publish: %s", info)
    return info


def _load_single(engine: Engine, cfg: Config, rd: RunDir, manifest: dict[str, Any], metrics: dict[str, Any],
                 slates: Path, fallback: Path, expected: dict[str, int]) -> dict[str, Any]:  # fmt: skip
    """The whole load in one transaction: killed or failed, nothing of it survives."""
    run: dict[str, Any] | None = None
    try:
        with engine.begin() as conn:
            run = db.begin_run(conn, rd.date, rd.run_id, manifest, metrics)
            loaded = db.load_tables(conn, run, _rows(slates, "user_id"), _rows(fallback, "segment"))
            if loaded != expected:
                raise db.PublishError(f"sent {loaded} rows, the run directory holds {expected}")
            db.validate_loaded(conn, run, expected, cfg.publish.min_users_ratio_vs_previous)
    except Exception as e:
        # The load transaction rolled back (no table, no run row survives); record the
        # attempt so an operator sees it in homepage.runs.
        log.error("publish: load failed, the live homepage is unchanged: %s", e)
        if run is not None:
            with engine.begin() as conn:
                db.record_failed(conn, run, f"{type(e).__name__}: {e}")
        raise
    return run


def _load_parallel(engine: Engine, cfg: Config, rd: RunDir, manifest: dict[str, Any], metrics: dict[str, Any],
                   slates: Path, fallback: Path, expected: dict[str, int], workers: int) -> dict[str, Any]:  # fmt: skip
    """One COPY per shard part on `workers` connections at once (the server parses the
    JSON on as many cores), then keys + ATTACH + checks in one transaction. The tables
    are committed before the COPYs, so a coordinating connection holds the run's load
    lock until the end: a crash leaves unattached tables that the next publish reaps."""
    parts = shards.part_files(slates)
    with engine.connect() as guard:
        with guard.begin():
            run = db.begin_run(guard, rd.date, rd.run_id, manifest, metrics)
            db.create_tables(guard, run)
            db.hold_load_lock(guard, run)  # session-level: outlives this commit

        def copy_part(part: Path) -> int:
            with engine.begin() as conn:
                return db.copy_rows(conn, run["slates_table"], ("user_id", "sections"), _rows(part, "user_id"))

        try:
            with ThreadPoolExecutor(workers) as pool:
                users = sum(pool.map(copy_part, parts))
            with engine.begin() as conn:
                segs = db.copy_rows(conn, run["fallback_table"], ("segment", "sections"), _rows(fallback, "segment"))
                if {"users": users, "segments": segs} != expected:
                    raise db.PublishError(f"sent {users} users / {segs} segments, the run directory holds {expected}")
                db.finish_tables(conn, run)
                db.validate_loaded(conn, run, expected, cfg.publish.min_users_ratio_vs_previous)
        except Exception as e:
            log.error("publish: parallel load failed, the live homepage is unchanged: %s", e)
            with engine.begin() as conn:
                db.abandon(conn, run, f"{type(e).__name__}: {e}")
            raise
    log.info("publish: %d parts loaded on %d connections", len(parts), workers)
    return run
