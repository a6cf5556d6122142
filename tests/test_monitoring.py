"""Issue 9: metrics an existing monitoring stack reads (Prometheus text exposition for
node_exporter's textfile collector)."""

import datetime as dt

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from recsys.config import build_config
from recsys.monitoring import stage_registry
from tests.conftest import RUN_DATE


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}  # fmt: skip


def test_validate_metrics_exact():
    cfg = build_config({"run_id": "main"})
    info = {"seconds": 12.5, "events_raw": 100, "events_clean": 95, "catalog_items": 7, "reject_rate": 0.05,
            "events_quarantined": {"duplicate": 3, "bad_user_id": 2}}  # fmt: skip
    got = _samples(generate_latest(stage_registry(cfg, dt.date(2026, 11, 22), "validate", info, True)).decode())
    lab = {("stage", "validate"), ("run_id", "main")}
    assert got[("recsys_stage_success", frozenset(lab))] == 1.0
    assert got[("recsys_stage_duration_seconds", frozenset(lab))] == 12.5
    assert got[("recsys_rows", frozenset(lab | {("kind", "events_raw")}))] == 100
    assert got[("recsys_quarantine_rate", frozenset(lab))] == 0.05
    assert got[("recsys_quarantined_rows", frozenset(lab | {("reason", "bad_user_id")}))] == 2
    assert got[("recsys_stage_logical_date_seconds", frozenset(lab))] == 1795305600.0  # 2026-11-22 UTC


def test_a_real_night_writes_every_stage_and_the_live_age(tiny_run):
    cfg, _ = tiny_run
    out = cfg.paths.work_root + "/metrics"
    import pathlib

    files = {p.name: p.read_text() for p in pathlib.Path(out).glob("*.prom")}
    from recsys.pipeline import STAGES

    assert {f"recsys_main_{s}.prom" for s in STAGES} <= set(files)
    evaluate = _samples(files["recsys_main_evaluate.prom"])
    assert any(k[0] == "recsys_quality" and ("method", "ranked") in k[1] for k in evaluate)
    live = _samples(files["recsys_live.prom"])
    published = live[("recsys_live_homepage_published_timestamp_seconds", frozenset())]
    assert published > dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp()
    assert live[("recsys_live_homepage_logical_date_seconds", frozenset())] == dt.datetime.combine(
        RUN_DATE, dt.time(0), tzinfo=dt.UTC).timestamp()  # fmt: skip
