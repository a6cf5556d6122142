"""The ranker's LightGBM settings at scale: the small-data settings (rank.*) against the
large-data ones (rank.large.*) on the same training frame, validation users and seed.

    python bench/rank_booster.py --run-dir /tmp/scale300k/work/runs/2026-11-21/main

Builds the rank split's training frame once (as the rank stage does), fits lambdarank
with each setting on the same split, and prints one row each: rounds, fit seconds,
validation NDCG@10 (ranker and the RRF blend on the same users) and predict seconds
per million pairs (the scoring cost every served user pays again).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from recsys import rank  # noqa: E402
from recsys.rundir import RunDir  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--run-dir", required=True, help="runs/<date>/<tag> of a run that reached the rank stage")
    a = p.parse_args()
    rd = RunDir.open(a.run_dir)
    cfg = rd.cfg
    t = time.perf_counter()
    pairs, X, names, targets = rank.training_frame(cfg, rd)
    frame_s = time.perf_counter() - t
    has_pos = pairs.groupby("user_id")["label"].transform("max").to_numpy() > 0
    users = np.array(sorted(pairs.loc[has_pos, "user_id"].unique()))
    (val_users,) = rank.validation_folds(cfg.model_copy(update={"rank": cfg.rank.model_copy(update={"cv_folds": 1})}),
                                         users)  # fmt: skip
    is_val = pairs["user_id"].isin(val_users).to_numpy()
    label, uid = pairs["label"].to_numpy(), pairs["user_id"].to_numpy()
    vpairs, val_targets = pairs.loc[is_val], {u: targets[u] for u in targets if u in val_users}
    blend = rank._ndcg10(vpairs, rank._blend_score(vpairs, cfg), val_targets)
    print(f"{len(pairs):,} pairs, {len(users):,} users with a positive, {len(val_users):,} validation users; "
          f"frame {frame_s:.0f} s; blend NDCG@10 {blend:.4f}")  # fmt: skip
    print("| settings | rounds (best) | fit s | val NDCG@10 | predict s per 1M pairs |\n|---|---:|---:|---:|---:|")
    keys = ("learning_rate", "num_leaves", "min_data_in_leaf", "early_stopping_rounds")
    for label_, section in (("small-data (rank.*)", cfg.rank), ("large-data (rank.large.*)", cfg.rank.large)):
        tree = {k: getattr(section, k) for k in keys}
        t = time.perf_counter()
        booster = rank.train_lambdarank(cfg, X, label, uid, names, has_pos & ~is_val, has_pos & is_val, tree=tree)
        fit_s = time.perf_counter() - t
        t = time.perf_counter()
        scores = booster.predict(X[is_val], num_iteration=booster.best_iteration)
        pred_s = (time.perf_counter() - t) / is_val.sum() * 1e6
        ndcg = rank._ndcg10(vpairs, scores, val_targets)
        print(f"| {label_}: rate {tree['learning_rate']}, {tree['num_leaves']} leaves, patience "
              f"{tree['early_stopping_rounds']} | {booster.best_iteration} | {fit_s:.0f} | {ndcg:.4f} | {pred_s:.2f} |",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
