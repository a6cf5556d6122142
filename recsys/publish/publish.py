"""The publish stage: owns the transactions around recsys.publish.db's functions."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pyarrow.parquet as pq

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
    try:
        with engine.begin() as conn:
            applied = db.apply_migrations(conn)
        run: dict[str, Any] | None = None
        try:
            with engine.begin() as conn:
                run = db.begin_run(conn, rd.date, rd.run_id, manifest, slim_metrics)
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
        "rows_per_s": round(expected["users"] / max(t_load, 1e-9), 1),
        "seconds": round(time.time() - t0, 1),
    }
    log.info("publish: %s", info)
    return info
