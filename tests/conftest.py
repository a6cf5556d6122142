"""Shared fixtures: one SparkSession per test session, one tiny synthetic data set, and
one real end-to-end pipeline run on it (SQLite) that many integration tests read."""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RUN_DATE = dt.date(2026, 11, 22)
MOVIELENS = ROOT.parent / "shared" / "data" / "ml-latest-small"


def tiny_overrides(data_root: Path, work_root: Path) -> dict:
    """Small budgets so the whole night runs in about a minute on 2 cores. Training is
    bounded by epochs, not by the clock: a wall-clock budget cut epoch 1 short on a
    loaded CI machine, and the night then kept the untrained model (best epoch 0)."""
    return {
        "paths": {"data_root": str(data_root), "work_root": str(work_root)},
        "spark": {"shuffle_partitions": 2, "driver_memory": "2g"},
        "events": {"bot_max_events_per_day": 200},
        "train": {"time_budget_s": 300, "max_epochs": 2, "batch_size": 32, "n_uniform_negatives": 64},
        "model": {"max_text_len": 32},
        "evaluate": {"holdout_days": 3, "gate_min_ratio_vs_baseline": 0.0},
    }


@pytest.fixture(scope="session")
def spark():
    from recsys.config import SparkConfig
    from recsys.spark import get_spark

    s = get_spark(SparkConfig(master="local[2]", shuffle_partitions=2, driver_memory="2g"), "recsys-tests")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    from recsys.data.synthetic import SyntheticSpec, generate

    out = tmp_path_factory.mktemp("tiny_data")
    generate(out, SyntheticSpec(n_users=250, n_items=180, days=14, end_date=RUN_DATE - dt.timedelta(days=1),
                                 seed=3, corrupt_rate=0.01, bot_users=1, bot_events_per_day=300))  # fmt: skip
    return out


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory, spark):
    """The whole pipeline, every stage real, on the tiny data set; returns (cfg, results)."""
    from recsys.config import load_config
    from recsys.pipeline import run_pipeline

    work = tmp_path_factory.mktemp("tiny_work")
    cfg = load_config(overrides=tiny_overrides(tiny_data, work), environ={})
    results = run_pipeline(cfg, RUN_DATE)
    return cfg, results


@pytest.fixture()
def tiny_rd(tiny_run):
    from recsys.rundir import RunDir

    cfg, _ = tiny_run
    return RunDir(cfg, RUN_DATE)


@pytest.fixture(scope="module")
def pg_url():
    """A fresh database on the local PostgreSQL server for one test module (dropped after);
    skips when the server is not reachable."""
    import uuid

    from recsys.publish import db
    from tests.publish.test_db import PG_ADMIN, _pg_available

    if not _pg_available():
        pytest.skip("PostgreSQL on 127.0.0.1:5432 is not reachable")
    name = f"recsys_test_{uuid.uuid4().hex[:8]}"
    admin = db.make_engine(PG_ADMIN).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f"CREATE DATABASE {name}")
    yield PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    with admin.connect() as c:
        c.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.dispose()
