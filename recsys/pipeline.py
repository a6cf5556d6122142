"""The night, top to bottom: every stage for one logical date, through the run directory.

    validate   input contract -> validated/ + quarantine/        (Spark)
    aggregate  validated/ -> features/{train,full}/ + holdout     (Spark)
    train      features/ -> model/                                (torch; GPU if present)
    embed      model/ -> embeddings/ (every item, every user)     (torch)
    retrieve   embeddings/ + features/ -> candidates/by_source    (EASE fit once, FAISS + other sources)
    rank       features/rank -> ranker/; candidates -> candidates/ranked (LightGBM lambdarank)
    rerank     candidates/ranked -> slates/ (diversified sections, reasons, fallbacks)
    evaluate   holdout metrics vs baselines -> metrics.json, report.html, gate
    publish    slates/ -> database (new table, atomic switch)     (SQLite or PostgreSQL)

Each stage is one function `(cfg, rd) -> info`; `run_stage` records its info, timing
and status in manifest.json. Airflow calls `run_stage` once per task.

Sharded stages (SHARDED: retrieve, rank, rerank) run per user shard (recsys/shards.py):
`prepare` once (decide the shard list, clear the stage's outputs, e.g. fit the ranker or EASE),
the stage function once per shard `(cfg, rd, shard, n_shards) -> info`, each reading only
its users' inputs and writing its own part files, then `finish` once (merge the shard
infos). `run_stage` does all three, the shards in a process pool over the cores; the
DAG maps one task per shard (`run_stage_part`), so an executor spreads them over workers
and a retry re-runs one shard.
"""

from __future__ import annotations

import datetime as dt
import importlib
import logging
import os
import shutil
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Sharded:
    """How a stage runs per user shard: its outputs (contract files written as parts,
    cleared by prepare) and its optional prepare / finish functions in the stage module."""

    outputs: tuple[str, ...]
    prepare: str | None = None  # (cfg, rd) -> info, once before the shards
    finish: str | None = None  # (cfg, rd, prepared, [shard info]) -> info, once after them


SHARDED: dict[str, Sharded] = {
    "retrieve": Sharded(("candidates/by_source.parquet",), prepare="prepare_retrieve", finish="finish_retrieve"),
    "rank": Sharded(("candidates/ranked.parquet",), prepare="prepare_rank", finish="finish_rank"),
    "rerank": Sharded(
        ("slates/slates.parquet", "slates/slate_items.parquet"), prepare="prepare_rerank", finish="finish_rerank"
    ),
}
PARTS = ("prepare", "shard", "finish")


def stage_function(stage: str, name: str | None = None) -> Callable[..., dict[str, Any]]:
    module, fn, _doc = STAGE_FUNCTIONS[stage]
    return getattr(importlib.import_module(module), name or fn)


def run_stage(stage: str, cfg: Config, run_date: dt.date) -> dict[str, Any]:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    rd = RunDir(cfg, run_date)
    with rd.lock():
        if stage != "validate":
            rd.sync_in()
        try:
            return _run_locked(stage, cfg, rd)
        finally:
            rd.sync_out()


def _run_locked(stage: str, cfg: Config, rd: RunDir) -> dict[str, Any]:
    if stage == "validate":
        # A run from the start gets an empty directory (no stale file from an earlier
        # attempt survives), built beside the last complete run until it succeeds.
        rd.begin_fresh()
    rd.init_manifest()
    log.info("stage %s: start (date=%s run=%s dir=%s)", stage, rd.date, rd.run_id, rd.root)
    if stage in SHARDED:
        return _record(stage, cfg, rd, time.time(), lambda: run_sharded(stage, cfg, rd))
    return _record(stage, cfg, rd, time.time(), lambda: stage_function(stage)(cfg, rd))


def _record(stage: str, cfg: Config, rd: RunDir, t0: float, body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run body; record its info, timing and status in the manifest and for monitoring."""
    started = dt.datetime.fromtimestamp(t0, dt.UTC).isoformat(timespec="seconds")
    try:
        info = body()
    except Exception as e:
        rd.record_stage(stage, {
            "status": "failed", "error": f"{type(e).__name__}: {e}", "started_at": started,
            "seconds": round(time.time() - t0, 1), "traceback": traceback.format_exc(limit=5),
        })  # fmt: skip
        log.error("stage %s: failed after %.1fs: %s", stage, time.time() - t0, e)
        monitoring.record_stage(cfg, rd.date, stage, {"seconds": time.time() - t0}, ok=False)
        raise
    info = {**info, "status": "ok", "started_at": started, "seconds": round(time.time() - t0, 1),
            "config_fingerprint": cfg.fingerprint()}  # fmt: skip
    rd.record_stage(stage, info)
    monitoring.record_stage(cfg, rd.date, stage, info, ok=True)
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


# ---- sharded stages ----------------------------------------------------------------------
def prepare_shards(stage: str, cfg: Config, rd: RunDir) -> list[int]:
    """Clear the stage's outputs (no stale part of an earlier shard count survives), run
    its prepare function, and return the run's shard list."""
    from recsys import jsonio, shards

    spec = SHARDED[stage]
    if stage == next(iter(SHARDED)):  # the first sharded stage decides the count
        rd.path(shards.PLAN_FILE).unlink(missing_ok=True)
    shard_list = shards.plan(cfg, rd)
    for out in (*spec.outputs, f"shards/{stage}"):
        p = rd.path(*out.split("/"))
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    t0 = time.time()
    prepared = _prepare(stage, cfg, rd) if spec.prepare else {}
    jsonio.write(rd.path("shards", stage, "prepare.json"), {**prepared, "_started": t0})
    log.info("stage %s: %d user shards", stage, len(shard_list))
    return shard_list


def _prepare(stage: str, cfg: Config, rd: RunDir) -> dict[str, Any]:
    """The stage's prepare function; in a child process when the shards will run in a
    pool, so the memory it used (the ranker's training frame: 5 GB and more at 100k
    users) is returned to the machine before the workers start, not kept by the parent."""
    from recsys import shards

    fn = SHARDED[stage].prepare
    assert fn is not None
    if shards.workers(cfg, shards.n_shards(rd)) == 1:
        return stage_function(stage, fn)(cfg, rd)
    import multiprocessing as mp

    with ProcessPoolExecutor(1, mp.get_context("spawn"), _init_worker, (os.cpu_count() or 1,)) as pool:
        return pool.submit(_prepare_in_worker, stage, fn, cfg, rd.date).result()


def _prepare_in_worker(stage: str, fn: str, cfg: Config, run_date: dt.date) -> dict[str, Any]:
    return stage_function(stage, fn)(cfg, RunDir(cfg, run_date))


def run_shard(stage: str, cfg: Config, rd: RunDir, shard: int) -> dict[str, Any]:
    from recsys import shards

    n = shards.n_shards(rd)
    if not 0 <= shard < n:
        raise ValueError(f"{stage}: shard {shard} is outside 0..{n - 1}")
    t0 = time.time()
    info = stage_function(stage)(cfg, rd, shard, n)
    info = {**info, "shard": shard, "seconds": round(time.time() - t0, 1)}
    shards.write_info(rd, stage, shard, info)
    log.info("stage %s: shard %d/%d done in %.1fs", stage, shard + 1, n, info["seconds"])
    return info


def finish_shards(stage: str, cfg: Config, rd: RunDir) -> dict[str, Any]:
    from recsys import jsonio, shards

    spec = SHARDED[stage]
    n = shards.n_shards(rd)
    infos = shards.read_infos(rd, stage, n)
    prepared = {k: v for k, v in jsonio.read(rd.require("shards", stage, "prepare.json")).items() if k != "_started"}
    info = stage_function(stage, spec.finish)(cfg, rd, prepared, infos) if spec.finish else {}
    return {**info, "shards": n, "shard_seconds_max": max(i["seconds"] for i in infos)}


def run_sharded(stage: str, cfg: Config, rd: RunDir) -> dict[str, Any]:
    """prepare, every shard (a process pool when there are several shards and cores),
    finish: the whole stage in this process, as `python -m recsys run` does it."""
    from recsys import shards

    shard_list = prepare_shards(stage, cfg, rd)
    n_workers = shards.workers(cfg, len(shard_list))
    if n_workers == 1:
        for i in shard_list:
            run_shard(stage, cfg, rd, i)
    else:
        # spawn, not fork: the parent may hold torch / faiss / JVM threads. Each worker
        # gets its share of the cores for BLAS / faiss / LightGBM threads.
        import multiprocessing as mp

        threads = max(1, (os.cpu_count() or 1) // n_workers)
        with ProcessPoolExecutor(n_workers, mp.get_context("spawn"), _init_worker, (threads,)) as pool:
            futures = [pool.submit(_shard_in_worker, stage, cfg, rd.date, i) for i in shard_list]
            for f in futures:
                f.result()  # the first failed shard fails the stage, with its traceback
    return finish_shards(stage, cfg, rd)


def _init_worker(threads: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _shard_in_worker(stage: str, cfg: Config, run_date: dt.date, shard: int) -> dict[str, Any]:
    # The parent holds the run lock for the whole stage; the worker works inside it.
    return run_shard(stage, cfg, RunDir(cfg, run_date), shard)


def run_stage_part(stage: str, part: str, cfg: Config, run_date: dt.date, shard: int | None = None) -> Any:
    """One Airflow task of a sharded stage: `prepare` (returns the shard list to map
    over), `shard` (one shard; shards of one stage run at once, so they share the run
    lock), `finish` (records the stage in the manifest like run_stage)."""
    if stage not in SHARDED or part not in PARTS:
        raise ValueError(f"{stage}/{part}: sharded stages are {list(SHARDED)}, parts {PARTS}")
    rd = RunDir(cfg, run_date)
    if part == "shard":
        if shard is None:
            raise ValueError(f"{stage}: a shard task needs its shard number")
        with rd.lock(shared=True):
            rd.sync_in()
            try:
                return run_shard(stage, cfg, rd, shard)
            finally:
                rd.sync_out()
    with rd.lock():
        rd.sync_in()
        try:
            return _run_part(stage, part, cfg, rd)
        finally:
            rd.sync_out()


def _run_part(stage: str, part: str, cfg: Config, rd: RunDir) -> Any:
    if part == "prepare":
        rd.init_manifest()
        return prepare_shards(stage, cfg, rd)
    from recsys import jsonio

    t0 = float(jsonio.read(rd.require("shards", stage, "prepare.json"))["_started"])
    return _record(stage, cfg, rd, t0, lambda: finish_shards(stage, cfg, rd))
