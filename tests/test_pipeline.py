"""The whole night on tiny synthetic data, every component real (Spark, MiniLM, FAISS, SQLite)."""

import datetime as dt
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from recsys.__main__ import main
from recsys.pipeline import STAGES
from tests.conftest import ROOT, RUN_DATE

pytestmark = pytest.mark.slow


def test_every_stage_ran_and_manifest_tells_the_story(tiny_run, tiny_rd):
    _cfg, results = tiny_run
    assert list(results) == list(STAGES)
    m = tiny_rd.read_manifest()
    assert m["logical_date"] == "2026-11-22" and m["config"]["train"]["time_budget_s"] == 300
    assert all(m["stages"][s]["status"] == "ok" for s in STAGES)
    v = m["stages"]["validate"]
    assert v["events_quarantined"]["bot_like_user"] == 300
    assert {"duplicate", "missing_user_id", "unknown_item", "future_timestamp"} <= set(v["events_quarantined"])
    q = pq.read_table(tiny_rd.path("quarantine", "events")).to_pandas()
    assert len(q) == sum(v["events_quarantined"].values()) and q["reason"].notna().all()
    assert m["stages"]["train"]["best_epoch"] >= 1


def test_outputs_scoreable_from_outside(tiny_run, tiny_rd):
    ranked = pd.read_parquet(tiny_rd.path("candidates", "ranked.parquet"))
    assert {"user_id", "item_id", "rank", "score", "source"} <= set(ranked.columns)
    users = pq.read_table(tiny_rd.path("features", "full", "sequences")).column("user_id").to_pylist()
    assert set(ranked["user_id"]) == set(users)  # every user with history has candidates
    emb = tiny_rd.path("embeddings")
    items = pq.read_table(emb / "items.parquet").to_pandas()
    catalog = pq.read_table(tiny_rd.path("features", "catalog")).to_pandas()
    assert len(items) == len(catalog)  # every item embedded, new ones included


def test_slates_have_sections_reasons_and_no_duplicates(tiny_run, tiny_rd):
    slates = pd.read_parquet(tiny_rd.path("slates", "slates.parquet"))
    keys = set()
    for s in slates["sections"]:
        secs = json.loads(s)
        ids = [it["item_id"] for sec in secs for it in sec["items"]]
        assert len(ids) == len(set(ids))
        assert all(it["reason"] and it["source"] for sec in secs for it in sec["items"])
        keys.update(sec["key"] for sec in secs)
    assert {"top_picks", "because_you_viewed"} <= keys and len(keys) >= 3


def test_metrics_model_and_baseline_side_by_side(tiny_run, tiny_rd):
    m = json.loads(tiny_rd.path("metrics.json").read_text())
    assert {"popularity", "two_tower", "covisitation", "blended", "homepage"} <= set(m["methods"])
    for row in m["methods"].values():
        assert 0.0 <= row["recall@20"] <= 1.0 and 0.0 <= row["ndcg@10"] <= 1.0
    assert m["gate"]["passed"] and tiny_rd.path("report.html").read_text().startswith("<!doctype html>")


def test_published_homepage_and_fallback(tiny_run):
    from recsys.publish import db

    cfg, results = tiny_run
    assert results["publish"]["switched"]
    engine = db.make_engine(cfg.database_url())
    with engine.connect() as conn:
        user = pd.read_parquet(f"{cfg.paths.work_root}/runs/{RUN_DATE}/main/slates/slates.parquet")["user_id"][0]
        page = db.get_homepage(conn, user)
        assert page["kind"] == "personal" and page["sections"][0]["key"] == "top_picks"
        anon = db.get_homepage(conn, "never-seen", "no-such-segment")
        assert anon["kind"] == "segment" and anon["segment"] == "all"
    engine.dispose()


def test_rerun_same_date_replaces_and_publishes_new_version(tiny_run, capsys):
    cfg, _ = tiny_run
    args = ["run", "--date", str(RUN_DATE), "--data-root", cfg.paths.data_root, "--work-root", cfg.paths.work_root,
            "--from", "rerank", "--set", "evaluate.holdout_days=3", "--set", "evaluate.gate_min_ratio_vs_baseline=0",
            "--set", "spark.shuffle_partitions=2", "--set", "model.max_text_len=32"]  # fmt: skip
    assert main(args) == 0
    assert main(["runs", "--work-root", cfg.paths.work_root]) == 0
    out = capsys.readouterr().out
    assert "2026-11-22/main/v2" in out and "published" in out


def test_gate_blocks_publish(tiny_run, capsys):
    cfg, _ = tiny_run
    args = ["run", "--date", str(RUN_DATE), "--data-root", cfg.paths.data_root, "--work-root", cfg.paths.work_root,
            "--from", "evaluate", "--set", "evaluate.holdout_days=3", "--set", "evaluate.gate_min_ratio_vs_baseline=100",
            "--set", "spark.shuffle_partitions=2", "--set", "model.max_text_len=32"]  # fmt: skip
    assert main(args) == 3  # gate exit code; publish never ran
    assert main(["publish", "--date", str(RUN_DATE), "--work-root", cfg.paths.work_root,
                 "--set", "evaluate.holdout_days=3"]) == 4  # fmt: skip


def test_cli_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "recsys", "--help"], capture_output=True, text=True, cwd=ROOT).stdout
    for cmd in [*STAGES, "run", "demo", "generate", "import-movielens", "show", "runs", "rollback", "config", "device"]:
        assert cmd in out


def test_cli_bad_input_is_a_clear_error(tmp_path, caplog):
    assert main(["validate", "--date", "2026-11-22", "--data-root", str(tmp_path), "--work-root", str(tmp_path)]) == 2
    assert "no event partitions" in caplog.text
    assert main(["config", "--set", "train.batch_size=0"]) == 2
    assert "train.batch_size" in caplog.text


def test_holdout_zero_trains_on_everything_and_still_publishes(tiny_run):
    """holdout_days=0: no internal split or gate; exclusion 'interacted' is honoured."""
    from recsys.config import load_config
    from recsys.pipeline import run_pipeline
    from recsys.retrieve import load_context
    from recsys.rundir import RunDir

    cfg0, _ = tiny_run
    over = {
        "paths": {"data_root": cfg0.paths.data_root, "work_root": cfg0.paths.work_root},
        "spark": {"shuffle_partitions": 2},
        "events": {"bot_max_events_per_day": 200, "exclude_policy": "interacted"},
        "train": {"time_budget_s": 5, "max_epochs": 2, "batch_size": 32, "n_uniform_negatives": 64},
        "model": {"max_text_len": 32},
        "evaluate": {"holdout_days": 0},
        "publish": {"database_url": f"sqlite:///{cfg0.paths.work_root}/h0.sqlite", "serving_run_id": "h0"},
        "run_id": "h0",
    }
    cfg = load_config(overrides=over, environ={})
    results = run_pipeline(cfg, RUN_DATE)
    rd = RunDir(cfg, RUN_DATE)
    assert not rd.path("features", "train").exists() and not rd.path("features", "holdout").exists()
    m = json.loads(rd.path("metrics.json").read_text())
    assert m["gate"]["skipped"].startswith("no holdout") and results["publish"]["switched"]
    assert "no holdout" in rd.path("report.html").read_text() and "PASSED" not in rd.path("report.html").read_text()
    # trained on everything before the ranker's labels (here its last rank.label_days:
    # enough of the tiny shop's users come back within them), which the models never see
    agg = results["aggregate"]
    assert agg["rank_labels_by"] == "days" and agg["rank_cutoff"] == str(RUN_DATE - dt.timedelta(days=3))
    assert results["train"]["users"] == agg["rank_users"] < agg["full_users"] and results["train"]["split"] == "rank"
    assert results["aggregate"]["rank_labels_pairs"] > 0 and "label_users" in results["rank"]
    ctx = load_context(cfg, rd, "full", with_vectors=False)
    ranked = pd.read_parquet(rd.path("candidates", "ranked.parquet"))
    seen = {(u, x) for u in ctx.user_row for x in ctx.catalog.ids[ctx.history(u)]}
    assert not any((u, x) in seen for u, x in zip(ranked["user_id"], ranked["item_id"], strict=True))


def test_small_data_validates_every_user_then_refits(tiny_run, tiny_data, tmp_path):
    """At most train.refit_max_users users: every eligible user validates (not 10%), and
    a second model trained on every step for the chosen epochs is the one saved."""
    import shutil

    from recsys.config import load_config
    from recsys.features import load_catalog, load_sequences
    from recsys.model.data import windows
    from recsys.model.train import train_model
    from recsys.rundir import RunDir
    from tests.conftest import RUN_DATE, tiny_overrides

    cfg, _ = tiny_run
    shutil.copytree(cfg.paths.work_root, tmp_path / "work")  # the tiny run's features, not its model
    over = tiny_overrides(tiny_data, tmp_path / "work")
    over["train"].update({"refit_max_users": 10_000, "time_budget_s": 60, "max_epochs": 2, "warm_start": False})
    small = load_config(overrides=over, environ={})
    rd = RunDir(small, RUN_DATE)
    info = train_model(small, rd)
    catalog = load_catalog(rd.require("features", "catalog"))
    seqs = load_sequences(rd.require("features", small.model_split(), "sequences"), catalog.index(),
                          small.type_names())  # fmt: skip
    eligible = int((seqs.lengths() >= small.train.val_tail_steps + 2).sum())
    assert info["val_users"] == eligible > 50  # every one of them, not a 10% sample
    assert info["best_epoch"] >= 1 and info["refit_epochs"] == info["best_epoch"]
    # the saved model is the refit one, trained on every step: no validation tail held out
    assert info["windows"] == len(windows(seqs, np.arange(len(seqs)), small.model.max_seq_len))


def test_another_member_fits_the_automatic_budget():
    """The automatic budget holds the whole ensemble to train.max_auto_budget_s; a fixed
    budget is shared by the members, so each one fits."""
    from recsys.config import Config
    from recsys.model.train import another_member_fits

    auto = Config().model_copy(update={"train": Config().train.model_copy(update={"max_auto_budget_s": 100.0})})
    assert another_member_fits(auto, [30.0])  # 30 + 30 <= 100
    assert another_member_fits(auto, [30.0, 20.0])  # 50 + 30 <= 100
    assert not another_member_fits(auto, [30.0, 40.0])  # 70 + 40 > 100
    assert not another_member_fits(auto, [60.0])  # one model takes most of it
    fixed = auto.model_copy(update={"train": auto.train.model_copy(update={"time_budget_s": 10.0})})
    assert another_member_fits(fixed, [60.0, 60.0])


def test_ensemble_stops_where_the_automatic_budget_ends(tiny_run, tiny_data, tmp_path):
    """A member that would end past train.max_auto_budget_s is not trained: the night
    serves the members it has, meta.json says how many, and member files of an earlier
    attempt on this date with more members are gone (embed would read them otherwise)."""
    import shutil

    from recsys.config import load_config
    from recsys.model.train import load_bundles, train_model
    from recsys.rundir import RunDir
    from tests.conftest import RUN_DATE, tiny_overrides

    cfg, _ = tiny_run
    shutil.copytree(cfg.paths.work_root, tmp_path / "work")  # the tiny run's features and its 3 members
    over = tiny_overrides(tiny_data, tmp_path / "work")
    # one epoch takes longer than half of a 0.5 s budget, so a second member cannot fit
    over["train"].update({"time_budget_s": None, "max_auto_budget_s": 0.5, "max_epochs": 1, "warm_start": False})
    small = load_config(overrides=over, environ={})
    rd = RunDir(small, RUN_DATE)
    assert (rd.path("model") / "member_2.pt").is_file()  # the earlier attempt's ensemble
    info = train_model(small, rd)
    assert info["members"] == 1 and "member_runs" not in info
    assert not list(rd.path("model").glob("member_*.pt"))
    assert len(load_bundles(small, rd)) == 1
