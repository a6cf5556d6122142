"""Nightly homepage pipeline: wiring only.

Each task calls `recsys.pipeline.run_stage(<stage>, config, logical date)`; everything
else lives in recsys/. Nothing heavy is imported at parse time (the recsys import is
inside the task), no connection is opened.

Backfill: trigger the DAG for past logical dates from the UI (or `airflow dags
backfill`). A run for date D reads events before D; publishing an older date never
replaces a newer live homepage unless the `force_publish` param is set.
Params: `overrides` ({"section": {"key": value}}; only the keys in
recsys.config.TRIGGER_ALLOWED: tuning and run_id), `date` (YYYY-MM-DD, overrides the
logical date), `force_publish`. The config file (RECSYS_CONFIG), paths, Spark options,
the database and the gate come from the deployment, never from whoever triggers a run.
GPU: set RECSYS_GPU_QUEUE / RECSYS_GPU_POOL in the scheduler's environment to send
train and embed to GPU workers.
Sharded stages (recsys.pipeline.SHARDED: retrieve, rank, rerank) are three tasks each:
`<stage>_shards` decides the run's user shards, `<stage>` is mapped over them (dynamic
task mapping: one task per shard, spread over the executor's workers, retried one shard
at a time), `<stage>_done` merges them and records the stage.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, AsyncCallback, DeadlineAlert, DeadlineReference, Param, get_current_context, task

# Cheap imports only (no torch, no Spark): the stage list and the alert callbacks.
from recsys.monitoring import on_task_failure
from recsys.pipeline import SHARDED, STAGES

GPU_STAGES = {"train", "embed"}
TIMEOUTS = {"train": timedelta(hours=4), "embed": timedelta(hours=2)}
GPU_QUEUE = os.environ.get("RECSYS_GPU_QUEUE")
GPU_POOL = os.environ.get("RECSYS_GPU_POOL")
# The homepage must be published this long after the logical date (02:00 -> 07:00);
# RECSYS_DEADLINE_HOURS=0 turns the alert off.
DEADLINE_HOURS = float(os.environ.get("RECSYS_DEADLINE_HOURS", "5"))


def _resolve() -> tuple:
    """Config + logical date of this DAG run (trigger overrides checked)."""
    from recsys.config import check_trigger_overrides, load_config, parse_date

    ctx = get_current_context()
    params = ctx["params"]
    overrides = check_trigger_overrides(dict(params.get("overrides") or {}))
    if params.get("force_publish"):
        overrides.setdefault("publish", {})["force"] = True
    cfg = load_config(None, overrides)
    # Manual runs in Airflow 3 may have no logical date: fall back to run_after.
    when = params.get("date") or ctx.get("logical_date") or ctx["dag_run"].run_after
    return cfg, parse_date(str(when)[:10] if isinstance(when, str) else when)


def _summary(info: dict) -> dict:
    # XCom keeps the small summary only (the run directory holds the rest).
    return {k: v for k, v in info.items() if k not in ("history", "traceback")}


def _run(stage: str) -> dict:
    from recsys.pipeline import run_stage

    return _summary(run_stage(stage, *_resolve()))


def _part(stage: str, part: str, shard: int | None = None):
    from recsys.pipeline import run_stage_part

    out = run_stage_part(stage, part, *_resolve(), shard=shard)
    return out if part == "prepare" else _summary(out)


with DAG(
    dag_id="homepage_nightly",
    description="Precompute and publish a personalised homepage for every user",
    schedule="0 2 * * *",
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    deadline=DeadlineAlert(
        reference=DeadlineReference.DAGRUN_LOGICAL_DATE,
        interval=timedelta(hours=DEADLINE_HOURS),
        callback=AsyncCallback("recsys.monitoring.on_deadline_missed"),
    )
    if DEADLINE_HOURS > 0
    else None,
    default_args={
        "on_failure_callback": on_task_failure,
        "retries": 2,
        "retry_delay": timedelta(minutes=5),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=30),
        "execution_timeout": timedelta(hours=1),
    },
    params={
        "overrides": Param({}, type="object", description='config overrides, e.g. {"train": {"time_budget_s": 600}}'),
        "date": Param(None, type=["null", "string"], description="YYYY-MM-DD; default: the logical date"),
        "force_publish": Param(False, type="boolean", description="replace a newer live homepage"),
    },
    tags=["recsys", "homepage"],
) as dag:
    previous = None
    for stage in STAGES:
        extra: dict = {"execution_timeout": TIMEOUTS.get(stage, timedelta(hours=1))}
        if stage in GPU_STAGES and GPU_QUEUE:
            extra["queue"] = GPU_QUEUE
        if stage in GPU_STAGES and GPU_POOL:
            extra["pool"] = GPU_POOL
        if stage == "publish":
            extra["retries"] = 1  # a refused publish (gate, backfill guard) is not transient

        if stage in SHARDED:

            @task(task_id=f"{stage}_shards")
            def prepare(stage_name: str = stage) -> list[int]:
                return _part(stage_name, "prepare")

            @task(task_id=stage, **extra)
            def shard(stage_name: str, shard: int) -> dict:
                return _part(stage_name, "shard", shard)

            @task(task_id=f"{stage}_done")
            def finish(stage_name: str = stage) -> dict:
                return _part(stage_name, "finish")

            first = prepare()
            last = finish()
            first >> shard.partial(stage_name=stage).expand(shard=first) >> last
        else:

            @task(task_id=stage, **extra)
            def run(stage_name: str = stage) -> dict:
                return _run(stage_name)

            first = last = run()
        if previous is not None:
            previous >> first
        previous = last
