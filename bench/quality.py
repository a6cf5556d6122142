"""Quality side by side: the model and its baselines on the same holdout, one run.

    python bench/quality.py synthetic   # default synthetic data (generated if absent)
    python bench/quality.py movielens   # ../shared/data/ml-latest-small via the importer

Runs the whole pipeline (every stage real) and prints a markdown table of the holdout
metrics of popularity, co-visitation, two-tower, blended and the published homepage,
plus the ratio of each to popularity, for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
from pathlib import Path

from recsys.config import load_config
from recsys.pipeline import run_pipeline
from recsys.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("dataset", choices=["synthetic", "movielens"])
    p.add_argument("--work", default=str(ROOT / "work" / "bench"))
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work = Path(a.work) / a.dataset
    if a.dataset == "synthetic":
        from recsys.data.synthetic import SyntheticSpec, generate

        data, date = work / "data", dt.date(2026, 11, 22)
        if not (data / "events").is_dir():
            generate(data, SyntheticSpec(end_date=date - dt.timedelta(days=1)))
        over: dict = {}
    else:
        from recsys.data.movielens import import_movielens

        data = work / "data"
        src = ROOT.parent / "shared" / "data" / "ml-latest-small"
        info = import_movielens(src, data) if not (data / "events").is_dir() else None
        date = dt.date(2018, 9, 25) if info is None else dt.date.fromisoformat(info["suggested_date"])
        # MovieLens users rarely return: a long holdout is needed to have users on both
        # sides of the split; rating bursts are real users, not bots; a rated movie is
        # never recommended again.
        over = {"evaluate": {"holdout_days": 730}, "events": {"lookback_days": 9000, "exclude_policy": "interacted",
                "bot_max_events_per_day": 1_000_000}}  # fmt: skip
    over["paths"] = {"data_root": str(data), "work_root": str(work / "work")}
    cfg = load_config(overrides=over)
    run_pipeline(cfg, date, stop="evaluate")
    m = json.loads(RunDir(cfg, date).path("metrics.json").read_text())
    base = m["methods"]["popularity"]
    cols = ["recall@10", "recall@20", "recall@50", "ndcg@20"]
    print(f"\n{a.dataset}: {int(m['users_evaluated'])} users, holdout {m['holdout_days']} days\n")
    print("| method | " + " | ".join(cols) + " | R@20 / popularity |")
    print("|---" * (len(cols) + 2) + "|")
    for name, row in m["methods"].items():
        ratio = row["recall@20"] / base["recall@20"] if base["recall@20"] else float("nan")
        print(f"| {name} | " + " | ".join(f"{row[c]:.4f}" for c in cols) + f" | {ratio:.2f} |")


if __name__ == "__main__":
    main()
