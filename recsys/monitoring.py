"""Metrics for monitoring: Prometheus text exposition files for node_exporter's textfile
collector, one file per stage (<metrics dir>/recsys_<run_id>_<stage>.prom, replaced
atomically), plus the age of the live homepage and the Airflow failure and deadline
callbacks. Writing metrics never fails a stage: errors are logged and swallowed.

Alert rules an operator should set are in docs/operations.md.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path
from typing import Any

from recsys.config import Config

log = logging.getLogger(__name__)

# Row counts reported per stage: (stage, info key) -> the `kind` label.
ROW_COUNTS = {
    ("validate", "events_raw"): "events_raw", ("validate", "events_clean"): "events_clean",
    ("validate", "catalog_items"): "catalog_items", ("aggregate", "full_users"): "users",
    ("retrieve", "candidates"): "candidates", ("rerank", "users"): "pages",
    ("publish", "users"): "published_users", ("publish", "segments"): "published_segments",
}  # fmt: skip


def metrics_dir(cfg: Config) -> Path:
    return Path(cfg.monitoring.textfile_dir or cfg.local_work_root() / "metrics")


def stage_registry(cfg: Config, run_date: dt.date, stage: str, info: dict[str, Any], ok: bool) -> Any:
    """A CollectorRegistry holding one stage's outcome (pure: no I/O)."""
    from prometheus_client import CollectorRegistry, Gauge

    reg = CollectorRegistry()
    lab = {"stage": stage, "run_id": cfg.run_id}
    gauges: dict[str, Gauge] = {}

    def gauge(name: str, doc: str, value: float, **extra: str) -> None:
        if name not in gauges:
            gauges[name] = Gauge(name, doc, [*lab, *extra], registry=reg)
        gauges[name].labels(**lab, **extra).set(value)

    gauge("recsys_stage_success", "1 when the stage's last attempt succeeded", 1.0 if ok else 0.0)
    gauge("recsys_stage_duration_seconds", "duration of the stage's last attempt", float(info.get("seconds") or 0))
    gauge("recsys_stage_last_attempt_timestamp_seconds", "when the stage's last attempt ended", time.time())
    gauge("recsys_stage_logical_date_seconds", "logical date of the stage's last attempt",
          dt.datetime.combine(run_date, dt.time(0), tzinfo=dt.UTC).timestamp())  # fmt: skip
    for (s, key), kind in ROW_COUNTS.items():
        if s == stage and isinstance(info.get(key), int | float):
            gauge("recsys_rows", "rows produced by a stage", float(info[key]), kind=kind)
    if stage == "validate" and ok:
        gauge("recsys_quarantine_rate", "share of raw events quarantined", float(info.get("reject_rate") or 0))
        for reason, n in (info.get("events_quarantined") or {}).items():
            gauge("recsys_quarantined_rows", "raw rows quarantined, by reason", float(n), reason=reason)
    if stage == "evaluate" and ok:
        gauge("recsys_gate_passed", "1 when the evaluation gate passed (or was not run)",
              1.0 if info.get("gate_passed") else 0.0)  # fmt: skip
        for metric, per_method in info.items():
            if isinstance(per_method, dict) and "@" in metric:
                for method, v in per_method.items():
                    gauge("recsys_quality", "holdout metric per method", float(v), metric=metric, method=method)
    if stage == "publish" and ok:
        gauge(
            "recsys_publish_switched", "1 when this run became the live homepage", 1.0 if info.get("switched") else 0.0
        )
    return reg


def record_stage(cfg: Config, run_date: dt.date, stage: str, info: dict[str, Any], ok: bool) -> Path | None:
    """Write the stage's .prom file; returns its path (None when writing failed)."""
    try:
        from prometheus_client import write_to_textfile

        out = metrics_dir(cfg)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"recsys_{cfg.run_id}_{stage}.prom"
        write_to_textfile(str(path), stage_registry(cfg, run_date, stage, info, ok))  # temp file + rename
        return path
    except Exception as e:  # metrics must never fail the night
        log.warning("monitoring: could not write metrics for %s: %s", stage, e)
        return None


def record_live(cfg: Config) -> Path | None:
    """The live homepage's version and publish time (alert on its age), read from the
    database the site reads. Run after publish and from cron (`recsys metrics`)."""
    try:
        from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

        from recsys.publish import db

        engine = db.make_engine(cfg.database_url())
        with engine.connect() as c:
            live = db.current_published(c)
            published_at = None
            if live:
                row = db.run_row(c, live["run_key"]) or {}
                published_at = row.get("published_at")
        engine.dispose()
        reg = CollectorRegistry()
        g = Gauge("recsys_live_homepage_published_timestamp_seconds", "when the live homepage was switched in",
                  registry=reg)  # fmt: skip
        d = Gauge("recsys_live_homepage_logical_date_seconds", "logical date of the live homepage", registry=reg)
        if live and published_at is not None:
            ts = published_at if isinstance(published_at, dt.datetime) else dt.datetime.fromisoformat(str(published_at))
            g.set((ts if ts.tzinfo else ts.replace(tzinfo=dt.UTC)).timestamp())
            d.set(dt.datetime.fromisoformat(str(live["logical_date"])[:10]).replace(tzinfo=dt.UTC).timestamp())
        out = metrics_dir(cfg)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "recsys_live.prom"
        write_to_textfile(str(path), reg)
        return path
    except Exception as e:
        log.warning("monitoring: could not write the live homepage's age: %s", e)
        return None


# ---- Airflow callbacks (imported by the DAG file; cheap imports only) -------------------------
def on_task_failure(context: dict[str, Any]) -> None:
    """Task failure callback: one ERROR line an alerting pipeline can match, and a
    recsys_task_failed metric (the stage metrics already say which stage failed)."""
    ti = context.get("task_instance") or context.get("ti")
    task_id = getattr(ti, "task_id", "?")
    log.error("ALERT recsys task failed: dag_run=%s task=%s try=%s error=%s", getattr(context.get("dag_run"), "run_id", "?"),
              task_id, getattr(ti, "try_number", "?"), context.get("exception"))  # fmt: skip


async def on_deadline_missed(context: dict[str, Any], **_: Any) -> None:
    """Deadline callback (runs in the Triggerer): the night has not published in time."""
    log.error("ALERT recsys homepage not published by its deadline: dag_run=%s", context.get("dag_run"))
