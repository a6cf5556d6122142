"""The two-tower's test quality after every epoch, beside the validation signal that
picks the epoch, on a run directory `bench/quality.py movielens` left behind.

    python bench/quality.py movielens --work /tmp/q          # once: the features
    python bench/two_tower_epochs.py --work /tmp/q --epochs 16 [--set train.temperature=0.1]
    python bench/two_tower_epochs.py --work /tmp/q --epochs 16 --seeds 1,2,3   # a seed ensemble
    python bench/next_item.py contract --data DIR --work /tmp/n   # once: the outside view's run
    python bench/two_tower_epochs.py --next-item /tmp/n/contract --epochs 30   # scored on its targets
    python bench/two_tower_epochs.py --next-item /tmp/n/movielens --fit --seeds 42,43,44   # as the night fits them

Trains exactly as the train stage does (same setup, same epochs, the ranker's split) but
for a fixed number of epochs, and after each prints the loss, the validation Recall@20
that early stopping reads, and the leave-last-one NDCG@10 of the two-tower alone over
the whole catalog for every user (history masked, user state from the evaluation split).
One run shows how much of a setting's effect is epoch-to-epoch noise: on ml-latest-small
the test NDCG@10 moves by about 0.005 between neighbouring epochs.

--seeds trains one model per seed side by side and prints, per epoch, each model's test
NDCG@10 and the ensemble's: the mean of their scores, which is one inner product of the
models' concatenated vectors (what a seed ensemble would hand FAISS); the ensembles of
the first 2, 3, ... seeds; and a snapshot ensemble (the mean score of epochs e-2..e). At
the end it replays stopping rules (early stopping on each member's own validation with
several patiences, every member at a fixed epoch) on the recorded epochs and prints the
ensemble's test NDCG@10 under each.
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
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from recsys.config import _deep_merge, load_config, parse_set_overrides  # noqa: E402
from recsys.features import load_sequences  # noqa: E402
from recsys.model import train as T  # noqa: E402
from recsys.rundir import RunDir  # noqa: E402


def next_item_run(folder: Path) -> tuple[dict, dt.date]:
    """The overrides bench/next_item.py runs with, and the logical date of its run in
    folder (WORK/DATASET)."""
    over = {"evaluate": {"holdout_days": 0},
            "events": {"exclude_policy": "interacted", "lookback_days": 100_000, "bot_max_events_per_day": 1_000_000},
            "paths": {"data_root": str(folder / "input"), "work_root": str(folder / "work")}}  # fmt: skip
    return over, dt.date.fromisoformat((folder / "date.txt").read_text().strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, help="bench/quality.py's --work")
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--date", default="2018-09-25", help="the run's logical date")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--seeds", default="", help="comma-separated seeds: an ensemble, one model per seed")
    ap.add_argument("--fit", action="store_true",
                    help="with --seeds: each member trained as the train stage does (early stopping, "
                         "train.max_epochs at most), then the members and the ensemble scored once")  # fmt: skip
    ap.add_argument("--next-item", type=Path, default=None,
                    help="a bench/next_item.py work folder (WORK/DATASET): its run, scored on its removed items")  # fmt: skip
    ap.add_argument("--test-users", type=int, default=0,
                    help="with --seeds: score a fixed random sample of this many test users (0 = all)")  # fmt: skip
    a = ap.parse_args()
    if a.next_item is not None:
        # The user state is the full split.
        over, date = next_item_run(a.next_item)
        state, ho = "full", pq.read_table(a.next_item / "targets.parquet").to_pandas()
    else:
        if a.work is None:
            ap.error("--work (bench/quality.py's) or --next-item (bench/next_item.py's) is required")
        work = a.work / "movielens"
        # The overrides bench/quality.py runs ml-latest-small with.
        over = {"evaluate": {"protocol": "leave_last", "leave_last_n": 1},
                "events": {"lookback_days": 9000, "exclude_policy": "interacted", "bot_max_events_per_day": 1_000_000},
                "paths": {"data_root": str(work / "data"), "work_root": str(work / "work")}}  # fmt: skip
        date, state, ho = dt.date.fromisoformat(a.date), "train", None
    cfg = load_config(overrides=_deep_merge(over, parse_set_overrides(a.set)), environ={})
    rd = RunDir(cfg, date)
    if ho is None:
        ho = pq.read_table(rd.require("features", "holdout"), columns=["user_id", "item_id"]).to_pandas()
    if a.seeds and a.fit:
        return fitted(cfg, rd, [int(x) for x in a.seeds.split(",")], state, ho)
    if a.seeds:
        return ensemble(cfg, rd, [int(x) for x in a.seeds.split(",")], a.epochs, state, ho, a.test_users)
    tr, _, catalog, _ = T._setup(cfg, rd)
    seqs = load_sequences(rd.require("features", state, "sequences"), catalog.index(), T.type_names(cfg))
    target = dict(zip(ho.user_id, catalog.index().get_indexer(ho.item_id), strict=True))
    rows = np.array([i for i, u in enumerate(seqs.user_ids) if u in target and target[u] >= 0])

    def test_ndcg() -> float:
        tr.refresh_table()
        assert tr.table is not None
        u = tr.bundle.user_vectors(seqs, tr.table, cfg.model.max_seq_len, rows=rows)  # [U, d]
        scores = u @ tr.table.T / cfg.train.temperature + tr.bias  # [U, N]
        gains = []
        for j, r in enumerate(rows):
            scores[j, torch.from_numpy(seqs.row(int(r))[0])] = -1e9
            t = target[seqs.user_ids[r]]
            rank = int((scores[j] > scores[j, t]).sum())
            gains.append(1 / np.log2(rank + 2) if rank < 10 else 0.0)
        return float(np.mean(gains))

    def val_smooth() -> tuple[float, float]:
        """Mean reciprocal rank over the whole catalog and mean log-likelihood of the
        validation tails (new items), the averaged weights: smoother than Recall@20."""
        tail = cfg.train.val_tail_steps
        with tr.averaged():
            tr.refresh_table()
            assert tr.table is not None
            u = tr.bundle.user_vectors(tr.seqs, tr.table, cfg.model.max_seq_len, rows=tr.val_rows, drop_last=tail)
            scores = u @ tr.table.T / cfg.train.temperature + tr.bias  # [V, N]
        rr, ll = [], []
        for j, r in enumerate(tr.val_rows):
            hist = tr.seqs.row(int(r))[0]
            scores[j, torch.from_numpy(hist[:-tail])] = -1e9
            logp = torch.log_softmax(scores[j], 0)
            for t in set(hist[-tail:].tolist()) - set(hist[:-tail].tolist()):
                rr.append(1.0 / (1 + int((scores[j] > scores[j, t]).sum())))
                ll.append(float(logp[t]))
        return float(np.mean(rr)), float(np.mean(ll))

    print(f"{len(rows)} test users; settings {a.set or 'defaults'}")
    print("| epoch | loss | val Recall@20 | val MRR | val log-lik | test NDCG@10 | seconds |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| 0 | | {tr.validate() or 0:.4f} | {'{:.4f} | {:.3f}'.format(*val_smooth())} | {test_ndcg():.4f} | |",
          flush=True)  # fmt: skip
    for e in range(1, a.epochs + 1):
        t0 = time.time()
        loss, _ = tr.epoch(e, None)
        val = tr.validate() or 0.0
        mrr, ll = val_smooth()
        with tr.averaged():
            ndcg = test_ndcg()
        print(f"| {e} | {loss:.3f} | {val:.4f} | {mrr:.4f} | {ll:.3f} | {ndcg:.4f} | {time.time() - t0:.0f} |",
              flush=True)  # fmt: skip


def test_targets(cfg, rd, catalog, state, ho, max_users: int = 0):  # type: ignore[no-untyped-def]
    """Each test user's sequence row (the state's split) and held-out item row; at most
    max_users of them (a fixed random sample; 0 = all)."""
    seqs = load_sequences(rd.require("features", state, "sequences"), catalog.index(), T.type_names(cfg))
    target = dict(zip(ho.user_id, catalog.index().get_indexer(ho.item_id), strict=True))
    rows = np.array([i for i, u in enumerate(seqs.user_ids) if u in target and target[u] >= 0])
    if 0 < max_users < len(rows):
        rows = np.sort(np.random.default_rng(0).choice(rows, max_users, replace=False))
    return seqs, rows, np.array([target[seqs.user_ids[r]] for r in rows])


def masked_scores(cfg, tr, seqs, rows) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """[U, N] scores of one trainer's averaged weights, each user's history at -1e9."""
    with tr.averaged():
        tr.refresh_table()
        u = tr.bundle.user_vectors(seqs, tr.table, cfg.model.max_seq_len, rows=rows)  # [U, d]
        scores = u @ tr.table.T / cfg.train.temperature + tr.bias  # [U, N]
    for j, r in enumerate(rows):
        scores[j, torch.from_numpy(seqs.row(int(r))[0])] = -1e9
    return scores


def ndcg10(scores: torch.Tensor, targets: np.ndarray) -> float:
    t = torch.from_numpy(targets)
    rank = (scores > scores.gather(1, t[:, None])).sum(1).numpy()  # [U] items scored above the target
    return float(np.mean(np.where(rank < 10, 1 / np.log2(rank + 2), 0.0)))


def ensemble(cfg, rd: RunDir, seeds: list[int], epochs: int, state, ho, max_users: int) -> None:  # type: ignore[no-untyped-def]
    trainers = []
    for s in seeds:
        c = cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": s})})
        trainers.append(T._setup(c, rd)[0])
    catalog = load_catalog_of(rd)
    seqs, rows, targets = test_targets(cfg, rd, catalog, state, ho, max_users)
    # Every epoch's [U, N] float32 scores are kept for the stopping rules at the end.
    gib = len(rows) * len(catalog.ids) * 4 * len(seeds) * (epochs + 3) / 2**30
    print(f"{len(rows)} test users; seeds {seeds}; ~{gib:.1f} GiB of kept scores (--test-users caps it)")
    prefixes = list(range(2, len(seeds)))  # the ensembles of the first 2, 3, ... seeds too
    print("| epoch | " + " | ".join(f"seed {s}" for s in seeds) + "".join(f" | first {k}" for k in prefixes)
          + " | ensemble (mean score) | with the 2 epochs before | seconds |")  # fmt: skip
    print("|---:|" + "---:|" * (len(seeds) + len(prefixes) + 3))
    recent: list[torch.Tensor] = []  # the ensemble's mean scores of the last 3 epochs, each [U, N]
    kept: list[list[torch.Tensor]] = [[] for _ in seeds]  # [member][epoch - 1] -> [U, N]
    vals: list[list[float]] = [[] for _ in seeds]  # [member][epoch - 1] -> validation Recall@20
    for e in range(1, epochs + 1):
        t0 = time.time()
        scores = []
        for m, tr in enumerate(trainers):
            tr.epoch(e, None)
            scores.append(masked_scores(cfg, tr, seqs, rows))
            kept[m].append(scores[-1])
            vals[m].append(tr.validate() or 0.0)
        each = [ndcg10(sc, targets) for sc in scores]
        part = [ndcg10(torch.stack(scores[:k]).mean(0), targets) for k in prefixes]
        recent = [*recent[-2:], torch.stack(scores).mean(0)]
        mean = ndcg10(recent[-1], targets)
        snap = ndcg10(torch.stack(recent).mean(0), targets)  # a snapshot ensemble over epochs e-2..e
        print(f"| {e} | " + " | ".join(f"{x:.4f}" for x in each + part)
              + f" | {mean:.4f} | {snap:.4f} | {time.time() - t0:.0f} |", flush=True)  # fmt: skip
    stopping_rules(kept, vals, targets, cfg.train.patience_epochs(trainers[0].steps / epochs))


def fitted(cfg, rd: RunDir, seeds: list[int], state, ho) -> None:  # type: ignore[no-untyped-def]
    """Each seed's model as the train stage fits it (T._fit: early stopping, the best
    epoch's weights), then each one's test NDCG@10 and the ensemble's (the mean of
    their scores, what embed serves). Seeds 42,43,44 are the night's three members."""
    catalog = load_catalog_of(rd)
    seqs, rows, targets = test_targets(cfg, rd, catalog, state, ho)
    print(f"{len(rows)} test users; seeds {seeds}")
    scores, lines = [], []
    for s in seeds:
        c = cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": s})})
        t0 = time.time()
        tr = T._setup(c, rd)[0]
        fit = T._fit(c, tr)
        scores.append(masked_scores(c, tr, seqs, rows))
        lines.append(
            f"| {s} | {fit['best_epoch']} | {len(fit['history']) - 1} | "
            f"{fit['best_val_recall@20']:.4f} | {ndcg10(scores[-1], targets):.4f} | {time.time() - t0:.0f} |"
        )
        print(lines[-1], flush=True)
    print("\n| seed | best epoch | epochs run | val Recall@20 | test NDCG@10 | seconds |")
    print("|---:|---:|---:|---:|---:|---:|")
    print("\n".join(lines))
    for k in range(2, len(scores)):
        print(f"| first {k} | | | | {ndcg10(torch.stack(scores[:k]).mean(0), targets):.4f} | |")
    print(f"| ensemble | | | | {ndcg10(torch.stack(scores).mean(0), targets):.4f} | |")


def stopping_rules(kept, vals, targets, default_patience: int) -> None:  # type: ignore[no-untyped-def]
    """The ensemble's test NDCG@10 had each member stopped by a rule, from the epochs
    recorded above: early stopping on the member's own validation Recall@20 with a
    patience (the best epoch before it ran out), or every member at a fixed epoch."""
    epochs = len(vals[0])

    def stopped_at(v: list[float], patience: int) -> int:
        best, bad = 0, 0
        for e in range(1, len(v)):
            if v[e] > v[best]:
                best, bad = e, 0
            else:
                bad += 1
                if bad >= patience:
                    break
        return best

    print(f"\n| rule | epochs chosen | ensemble test NDCG@10 |  (the default's patience here: {default_patience})")
    print("|---|---|---:|")
    for p in sorted({3, 5, 8, default_patience, epochs}):
        chosen = [stopped_at(v, p) for v in vals]
        sc = torch.stack([kept[m][e].float() for m, e in enumerate(chosen)]).mean(0)
        print(f"| patience {p} | {[e + 1 for e in chosen]} | {ndcg10(sc, targets):.4f} |")
    for e in range(4, epochs, 2):
        sc = torch.stack([k[e].float() for k in kept]).mean(0)
        print(f"| fixed epoch {e + 1} | | {ndcg10(sc, targets):.4f} |")


def load_catalog_of(rd: RunDir):  # type: ignore[no-untyped-def]
    from recsys.features import load_catalog

    return load_catalog(rd.require("features", "catalog"))


if __name__ == "__main__":
    main()
