"""Training throughput with batches in random order against batches cut by length
(`train.length_pool`), on a run directory whose features exist.

    python -m recsys run --date 2026-11-22 --data-root /tmp/s30/data --work-root /tmp/s30/work --to aggregate
    python bench/train_batches.py --work-root /tmp/s30/work --data-root /tmp/s30/data --date 2026-11-22 \\
        [--set train.full_softmax_max_items=0] [--seconds 90] [--reps 2]
    python bench/train_batches.py --next-item /tmp/n/movielens     # bench/next_item.py's run

Each repetition sets up one trainer per setting (the train stage's own `_setup`), then
trains one epoch or until --seconds have passed, whichever comes first, the settings
alternated. Prints, per run, the steps an epoch takes, how many steps were computed per
real one (padding included), and the positions (training targets) per second.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from recsys.config import _deep_merge, load_config, parse_set_overrides  # noqa: E402
from recsys.model import train as T  # noqa: E402
from recsys.model.data import length_batches  # noqa: E402
from recsys.rundir import RunDir  # noqa: E402


def padded_share(wins: np.ndarray, batch_size: int, pool: int) -> tuple[int, float]:
    """(batches an epoch, steps computed per real step) of one epoch's batches."""
    lengths = wins[:, 2] - wins[:, 1]  # [W]
    batches = length_batches(wins, batch_size, np.random.default_rng(0), pool)
    return len(batches), sum(len(b) * int(lengths[b].max()) for b in batches) / int(lengths.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--next-item", type=Path, default=None, help="a bench/next_item.py work folder (WORK/DATASET)")
    ap.add_argument("--work-root", type=Path)
    ap.add_argument("--data-root", type=Path)
    ap.add_argument("--date", default=None)
    ap.add_argument("--pools", default="0,50", help="the train.length_pool values compared")
    ap.add_argument("--seconds", type=float, default=90.0)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    a = ap.parse_args()
    if a.next_item is not None:
        from two_tower_epochs import next_item_run  # bench/, this script's folder

        over, date = next_item_run(a.next_item)
    else:
        if a.work_root is None or a.data_root is None or a.date is None:
            ap.error("--next-item, or --work-root, --data-root and --date")
        over = {"paths": {"data_root": str(a.data_root), "work_root": str(a.work_root)}}
        date = dt.date.fromisoformat(a.date)
    cfg = load_config(overrides=_deep_merge(over, parse_set_overrides(a.set)), environ={})
    rd = RunDir(cfg, date)
    print(f"settings {a.set or 'defaults'}; up to {a.seconds:.0f} s or one epoch per run")
    print("| rep | length_pool | steps an epoch | computed / real steps | steps run | seconds | positions/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for rep in range(1, a.reps + 1):
        for pool in (int(x) for x in a.pools.split(",")):
            c = cfg.model_copy(update={"train": cfg.train.model_copy(update={"length_pool": pool})})
            tr = T._setup(c, rd)[0]
            n_batches, share = padded_share(tr.train_wins, c.train.batch_size, pool)
            t0 = time.time()
            tr.epoch(1, t0 + a.seconds)
            s = time.time() - t0
            print(f"| {rep} | {pool} | {n_batches} | {share:.2f} | {tr.steps} | {s:.1f} | {tr.positions / s:,.0f} |",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
