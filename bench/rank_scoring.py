"""Where the rank stage's time goes: one shard's serving candidates scored by the saved
ranker, split into building the pairs, each feature group, and LightGBM's predict (the
reference: the part no feature work can remove), in one run on a finished run directory.

    python bench/quality.py synthetic      # or any run that reached the rank stage
    python bench/rank_scoring.py --run-dir work/bench/synthetic/work/runs/2026-11-22/main
    python bench/rank_scoring.py --run-dir /tmp/scale300k/work/runs/2026-11-21/main --shard 0 --users 20000

A sharded run is timed on one shard's part (--shard), optionally on its first --users
users (sorted ids: the same users every time).
Prints users/s for the whole of rank_candidates and seconds per part.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from recsys import rank  # noqa: E402
from recsys.retrieve import load_context  # noqa: E402
from recsys.rundir import RunDir  # noqa: E402
from recsys.shards import PLAN_FILE, existing_part, n_shards  # noqa: E402


def timed_groups(spent: dict[str, float]) -> list:  # type: ignore[type-arg]
    """The feature registry with each group wrapped in a timer."""

    def wrap(group):  # type: ignore[no-untyped-def]
        def run(space, b):  # type: ignore[no-untyped-def]
            t = time.perf_counter()
            out = group(space, b)
            spent[group.__name__] += time.perf_counter() - t
            return out

        return run

    return [wrap(g) for g in rank.FEATURE_GROUPS]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--run-dir", required=True, help="runs/<date>/<tag> of a finished run")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--shard", type=int, default=0, help="the part to time in a sharded run")
    p.add_argument("--users", type=int, default=0, help="time only the first N users (0 = all)")
    a = p.parse_args()
    rd = RunDir.open(a.run_dir)
    cfg = rd.cfg
    n = n_shards(rd) if rd.path(PLAN_FILE).is_file() else 1
    ctx = load_context(cfg, rd, "full", shard=(a.shard, n) if n > 1 else None)
    cands = pd.read_parquet(existing_part(rd, n, a.shard, "candidates", "by_source.parquet"))
    if a.users:
        keep = sorted(cands["user_id"].unique())[: a.users]
        cands = cands[cands["user_id"].isin(set(keep))]
    ranker = rank.load_ranker(rd)
    if ranker is None:
        sys.exit("this run fell back to the blend: no ranker to time")
    users = cands["user_id"].nunique()
    spent: dict[str, float] = defaultdict(float)
    groups, rank.FEATURE_GROUPS = rank.FEATURE_GROUPS, timed_groups(spent)
    predict = ranker.model.predict

    def timed_predict(X, *args, **kw):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        out = predict(X, *args, **kw)
        spent["lightgbm predict"] += time.perf_counter() - t
        return out

    ranker.model.predict = timed_predict
    best = float("inf")
    for _ in range(a.repeat):
        spent.clear()
        t = time.perf_counter()
        rank.rank_candidates(cfg, ranker, ctx, cands)
        total = time.perf_counter() - t
        if total < best:
            best, parts = total, dict(spent)
    rank.FEATURE_GROUPS = groups
    print(f"{users} users, {len(cands)} candidate rows, {ranker.model.num_trees()} trees: "
          f"best of {a.repeat} {best:.2f}s = {users / best:.0f} users/s")  # fmt: skip
    print("| part | seconds | share |\n|---|---|---|")
    for name, s in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {s:.2f} | {s / best:.0%} |")
    rest = best - sum(parts.values())
    print(f"| pairs, batching, sorting (the rest) | {rest:.2f} | {rest / best:.0%} |")


if __name__ == "__main__":
    main()
