"""Evaluate's bootstrap intervals: one matrix product per method against the per-metric
gathers it replaced, on the same values and seed (the bounds must be identical: the
resamples are the same draws from the same generator).

    python bench/bootstrap.py [--users 20000 50000] [--metrics 12]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recsys.evaluation.metrics import summarise


def gather_ci(values: list[float], n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """The reference: 1000 resamples of the users gathered per metric (the old code)."""
    x = np.asarray(values, dtype=np.float64)
    means = x[np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))].mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, nargs="+", default=[20_000, 50_000])
    ap.add_argument("--metrics", type=int, default=12, help="4 metrics at 3 cut-offs per method")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print("| users | per-metric gathers s | one product s | speed-up | max bound difference |")
    print("|---:|---:|---:|---:|---:|")
    for n in args.users:
        # NDCG-like values: most users 0, the rest in (0, 1].
        per_user = {f"m{i}": list((rng.random(n) < 0.2) * rng.random(n)) for i in range(args.metrics)}
        t = time.time()
        ref = {k: gather_ci(v) for k, v in per_user.items()}
        t_ref = time.time() - t
        t = time.time()
        new = summarise(per_user)
        t_new = time.time() - t
        diff = max(max(abs(ref[k][0] - new[f"{k}_lo"]), abs(ref[k][1] - new[f"{k}_hi"])) for k in per_user)
        print(f"| {n:,} | {t_ref:.2f} | {t_new:.2f} | {t_ref / t_new:.1f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
