"""Quality side by side: every method and every baseline on the same holdout, one run.

    python bench/quality.py synthetic   # default synthetic data, 7-day time holdout
    python bench/quality.py movielens   # ml-latest-small, leave-last-one, all users

Runs the pipeline through the evaluate stage (every stage real) and prints one markdown
table per data set: NDCG@10, Recall@10, MRR@10 and Recall@50 with 95% bootstrap
intervals, coverage@10 and long-tail share@10, the ratio of NDCG@10 to the best in-run
baseline, and the cold-start slice, for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.config import Config, _deep_merge, load_config, parse_set_overrides  # noqa: E402
from recsys.data.synthetic import SyntheticSpec  # noqa: E402
from recsys.evaluation.evaluate import BASELINES  # noqa: E402
from recsys.pipeline import run_pipeline  # noqa: E402
from recsys.rundir import RunDir  # noqa: E402

SYNTHETIC_DATE = dt.date(2026, 11, 22)


def table(m: dict) -> str:
    methods, beyond, cold = m["methods"], m["beyond_accuracy"], m["cold_start"]
    best = max((b for b in BASELINES if b in methods), key=lambda b: methods[b]["ndcg@10"])
    ref = methods[best]["ndcg@10"]
    head = ("| method | NDCG@10 [95% CI] | Recall@10 | MRR@10 | Recall@50 | coverage@10 | long-tail@10 "
            "| NDCG@10 / best baseline | cold Recall@50 |")  # fmt: skip
    lines = [head, "|---" * 9 + "|"]
    for name, r in sorted(methods.items(), key=lambda kv: -kv[1]["ndcg@10"]):
        c = cold.get(name, {}).get("recall@50")
        lines.append(
            f"| {name}{' (baseline)' if name in BASELINES else ''} | {r['ndcg@10']:.4f} "
            f"[{r['ndcg@10_lo']:.3f}, {r['ndcg@10_hi']:.3f}] | {r['recall@10']:.4f} | {r['mrr@10']:.4f} "
            f"| {r['recall@50']:.4f} | {beyond[name]['coverage@10']:.3f} | {beyond[name]['long_tail_share@10']:.3f} "
            f"| {r['ndcg@10'] / ref if ref else float('nan'):.2f} | {'' if c is None else f'{c:.3f}'} |"
        )
    return "\n".join(lines) + f"\n\nbest baseline: {best}"


def setup(dataset: str, work_root: str, sets: list[str]) -> tuple[Config, dt.date]:
    """The data set under work_root/dataset (generated or imported once) and the
    config every quality bench scores it with."""
    work = Path(work_root) / dataset
    if dataset == "synthetic":
        from recsys.data.synthetic import generate

        data, date = work / "data", SYNTHETIC_DATE
        if not (data / "events").is_dir():
            generate(data, synthetic_spec())
        over: dict = {"evaluate": {"protocol": "time", "holdout_days": 7}}
    else:
        from recsys.data.movielens import import_movielens

        data = work / "data"
        src = ROOT.parent / "shared" / "data" / "ml-latest-small"
        info = import_movielens(src, data) if not (data / "events").is_dir() else None
        date = dt.date(2018, 9, 25) if info is None else dt.date.fromisoformat(info["suggested_date"])
        # Users rarely return: each user's last rating is the target (leave-last-one);
        # rating bursts are real users, not bots; a rated movie is never shown again.
        over = {"evaluate": {"protocol": "leave_last", "leave_last_n": 1},
                "events": {"lookback_days": 9000, "exclude_policy": "interacted",
                           "bot_max_events_per_day": 1_000_000}}  # fmt: skip
    over["paths"] = {"data_root": str(data), "work_root": str(work / "work")}
    over["evaluate"]["gate_enabled"] = False  # measure, never block
    return load_config(overrides=_deep_merge(over, parse_set_overrides(sets)), environ={}), date


def synthetic_spec() -> SyntheticSpec:
    """The synthetic shop of this bench: the generator's defaults, ending the day
    before SYNTHETIC_DATE."""
    return SyntheticSpec(end_date=SYNTHETIC_DATE - dt.timedelta(days=1))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("dataset", choices=["synthetic", "movielens"])
    p.add_argument("--work", default=str(ROOT / "work" / "bench"))
    p.add_argument("--set", action="append", default=[], help="config override KEY=VALUE")
    p.add_argument("--from", dest="start", default=None, help="re-run from this stage")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg, date = setup(a.dataset, a.work, a.set)
    t0 = time.time()
    run_pipeline(cfg, date, start=a.start, stop="evaluate")
    rd = RunDir(cfg, date)
    m = json.loads(rd.path("metrics.json").read_text())
    proto = f"{m['protocol']}" + (f", {m['holdout_days']}-day holdout" if m["protocol"] == "time" else "")
    print(f"\n{a.dataset}: {m['users_evaluated']} users, {proto}, {m['cold_start_targets']} cold-start targets, "
          f"run {time.time() - t0:.0f}s\n")  # fmt: skip
    print(table(m))
    rank = rd.stage_info("rank")
    print(f"\nranker: {rank.get('ranker')} {rank.get('val_ndcg@10')} top features {rank.get('top_features')} "
          f"{rank.get('fallback', '')}")  # fmt: skip


if __name__ == "__main__":
    main()
