"""The night, top to bottom: every stage for one logical date, through the run directory.

    validate   input contract -> validated/ + quarantine/        (Spark)
    aggregate  validated/ -> features/{train,full}/ + holdout     (Spark)
    train      features/ -> model/                                (torch; GPU if present)
    embed      model/ -> embeddings/ (every item, every user)     (torch)
    retrieve   embeddings/ + features/ -> candidates/by_source    (FAISS + other sources)
    rank       features/rank -> ranker/; candidates -> candidates/ranked (LightGBM lambdarank)
    rerank     candidates/ranked -> slates/ (diversified sections, reasons, fallbacks)
    evaluate   holdout metrics vs baselines -> metrics.json, report.html, gate
    publish    slates/ -> database (new table, atomic switch)     (SQLite or PostgreSQL)

Each stage is one function `(cfg, run_date) -> info`; `run_stage` records its info,
timing and status in manifest.json. Airflow calls `run_stage` once per task.
"""

from __future__ import annotations

import datetime as dt
import importlib
import logging
import time
import traceback
from collections.abc import Callable
from typing import Any

from recsys import monitoring
from recsys.config import Config
from recsys.rundir import RunDir

log = logging.getLogger(__name__)


# stage -> (module, function, what it does). Modules are imported when the stage runs,
# so importing this file (as the Airflow DAG does at parse time) costs nothing. Every
# function takes (cfg, rd) and returns a JSON-able info dict. The DAG, the CLI and the
# docs take the stage list from here.
STAGE_FUNCTIONS: dict[str, tuple[str, str, str]] = {
    "validate": ("recsys.aggregate", "run_validate", "read the input contract, quarantine bad rows"),
    "aggregate": ("recsys.aggregate", "run_aggregate", "Spark features: sequences, item stats, co-visitation, splits"),
    "train": ("recsys.model.train", "train_model", "fine-tune the two-tower model"),
    "embed": ("recsys.model.embed", "embed_all", "embed every item and user"),
    "retrieve": ("recsys.retrieve", "run_retrieve", "candidates from FAISS and the other sources"),
    "rank": ("recsys.rank", "run_rank", "learned ranker (LightGBM lambdarank) over every candidate"),
    "rerank": ("recsys.rerank", "run_rerank", "diversify and build sections + fallbacks"),
    "evaluate": ("recsys.evaluation.evaluate", "run_evaluate", "holdout metrics vs baselines, the publish gate"),
    "publish": ("recsys.publish.publish", "run_publish", "load into the database and switch atomically"),
}
STAGES = list(STAGE_FUNCTIONS)


def stage_function(stage: str) -> Callable[[Config, RunDir], dict[str, Any]]:
    module, name, _doc = STAGE_FUNCTIONS[stage]
    return getattr(importlib.import_module(module), name)


def run_stage(stage: str, cfg: Config, run_date: dt.date) -> dict[str, Any]:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    rd = RunDir(cfg, run_date)
    with rd.lock():
        return _run_locked(stage, cfg, rd)


def _run_locked(stage: str, cfg: Config, rd: RunDir) -> dict[str, Any]:
    run_date = rd.date
    if stage == "validate":
        # A run from the start gets an empty directory (no stale file from an earlier
        # attempt survives), built beside the last complete run until it succeeds.
        rd.begin_fresh()
    rd.init_manifest()
    log.info("stage %s: start (date=%s run=%s dir=%s)", stage, run_date, rd.run_id, rd.root)
    t0 = time.time()
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    try:
        info = stage_function(stage)(cfg, rd)
    except Exception as e:
        rd.record_stage(stage, {
            "status": "failed", "error": f"{type(e).__name__}: {e}", "started_at": started,
            "seconds": round(time.time() - t0, 1), "traceback": traceback.format_exc(limit=5),
        })  # fmt: skip
        log.error("stage %s: failed after %.1fs: %s", stage, time.time() - t0, e)
        monitoring.record_stage(cfg, run_date, stage, {"seconds": time.time() - t0}, ok=False)
        raise
    info = {**info, "status": "ok", "started_at": started, "seconds": round(time.time() - t0, 1),
            "config_fingerprint": cfg.fingerprint()}  # fmt: skip
    rd.record_stage(stage, info)
    monitoring.record_stage(cfg, run_date, stage, info, ok=True)
    if stage == "publish":
        monitoring.record_live(cfg)
    log.info("stage %s: done in %.1fs", stage, info["seconds"])
    if stage == STAGES[-1]:
        rd.promote()
    return info


def run_pipeline(
    cfg: Config, run_date: dt.date, start: str | None = None, stop: str | None = None
) -> dict[str, dict[str, Any]]:
    names = STAGES
    a = names.index(start) if start else 0
    b = names.index(stop) + 1 if stop else len(names)
    if a >= b:
        raise ValueError(f"--from {start} comes after --to {stop}")
    results = {}
    t0 = time.time()
    rd = RunDir(cfg, run_date)
    with rd.lock():  # held across the stages: no other writer between two of them
        for name in names[a:b]:
            results[name] = run_stage(name, cfg, run_date)
        RunDir(cfg, run_date).promote()  # the requested range succeeded
    log.info("pipeline: %s done in %.1fs (%s)", run_date, time.time() - t0, " ".join(names[a:b]))
    return results
