"""The user tower over a run's serving users, three ways, the same users and model in
the same process; the vectors must agree:
- arrival order, every position (the reference: each batch padded to its longest history);
- length order, every position (embed before `UserTower.last`);
- length order, the last step only (`Bundle.user_vectors`, what embed does).

    python bench/user_vectors.py --run-dir /tmp/scale1m/work/runs/2026-11-21/main [--users 20000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recsys.config import load_config
from recsys.features import load_catalog, load_sequences
from recsys.model.data import pad_batch
from recsys.model.towers import gap_buckets
from recsys.model.train import load_bundle
from recsys.rundir import RunDir


@torch.no_grad()
def arrival_order(bundle, seqs, table, rows: np.ndarray, max_len: int, batch: int) -> torch.Tensor:
    """The reference: batches in the users' own order."""
    bundle.model.eval()
    out = []
    for i in range(0, len(rows), batch):
        items, types, ts, valid = pad_batch(seqs, rows[i : i + batch], max_len)
        states = bundle.model.user(table[items], types, gap_buckets(ts, valid), valid)
        out.append(states[torch.arange(len(items)), valid.sum(1).clamp(min=1) - 1])
    return torch.cat(out)


@torch.no_grad()
def length_order(bundle, seqs, table, rows: np.ndarray, max_len: int, batch: int) -> torch.Tensor:
    """Shortest history first, every position computed, the last one kept."""
    bundle.model.eval()
    order = np.argsort(np.minimum(seqs.lengths()[rows], max_len), kind="stable")
    out = []
    for i in range(0, len(rows), batch):
        items, types, ts, valid = pad_batch(seqs, rows[order[i : i + batch]], max_len)
        states = bundle.model.user(table[items], types, gap_buckets(ts, valid), valid)
        out.append(states[torch.arange(len(items)), valid.sum(1).clamp(min=1) - 1])
    return torch.cat(out)[torch.from_numpy(np.argsort(order))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", type=Path, required=True, help="<work_root>/runs/<date>/<run_id>")
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=1, help="score every user this many times (small runs)")
    args = ap.parse_args()
    work_root, date, run_id = args.run_dir.parents[2], args.run_dir.parent.name, args.run_dir.name
    cfg = load_config(overrides={"paths": {"work_root": str(work_root)}, "run_id": run_id}, environ={})
    import datetime as dt

    rd = RunDir(cfg, dt.date.fromisoformat(date))
    catalog = load_catalog(rd.require("features", "catalog"))
    bundle = load_bundle(cfg, rd)
    bundle.texts = catalog.texts
    table = torch.from_numpy(np.load(rd.require("embeddings", "items.npy")))
    seqs = load_sequences(rd.require("features", "full", "sequences"), catalog.index(), bundle.type_names,
                          shard=(0, max(1, 1_000_000 // args.users)))  # fmt: skip
    rows = np.tile(np.arange(min(args.users, len(seqs))), args.repeat)
    steps = np.minimum(seqs.lengths()[rows], cfg.model.max_seq_len)
    L = cfg.model.max_seq_len
    t = time.time()
    ref = arrival_order(bundle, seqs, table, rows, L, args.batch)
    t_ref = time.time() - t
    t = time.time()
    mid = length_order(bundle, seqs, table, rows, L, args.batch)
    t_mid = time.time() - t
    t = time.time()
    new = bundle.user_vectors(seqs, table, L, batch_size=args.batch, rows=rows)
    t_new = time.time() - t
    print(f"{len(rows):,} users, median history {np.median(steps):.0f} of {L} steps, {torch.get_num_threads()} threads")
    print("| order | s | users/s | max abs difference from the reference |\n|---|---:|---:|---:|")
    print(f"| arrival, every position (reference) | {t_ref:.1f} | {len(rows) / t_ref:,.0f} | |")
    print(f"| length, every position | {t_mid:.1f} | {len(rows) / t_mid:,.0f} | {float((ref - mid).abs().max()):.1e} |")
    print(f"| length, last step only (embed) | {t_new:.1f} | {len(rows) / t_new:,.0f} | "
          f"{float((ref - new).abs().max()):.1e} |")  # fmt: skip
    print(f"speed-up over the reference {t_ref / t_new:.2f}x, over length order alone {t_mid / t_new:.2f}x")


if __name__ == "__main__":
    main()
