"""How much of co-visitation's next-item accuracy a dot-product model can hold: the
night's co-visitation table scored as the source scores it (the user's last
covis_anchors distinct items, weighted 1 / (1 + recency)), then the same table cut to
its best rank-k approximation (truncated SVD), scored the same way, on the same users
and removed items.

    python bench/next_item.py movielens --work /tmp/n            # once: the outside view's run
    python bench/covis_rank.py --next-item /tmp/n/movielens --ranks 32,64,128,256,512

A two-tower scores item j for a user as <u, v_j>: whatever the user tower does, its
scores for one user's last item are a rank-d function of (anchor, item). The rank-k
rows of this table are the best that any such model of dimension k could do with
co-visitation's own signal; the full table is the reference, in the same run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from scipy.sparse import csr_matrix  # noqa: E402
from scipy.sparse.linalg import svds  # noqa: E402


def anchor_weights(histories: list[np.ndarray], n_items: int, n_anchors: int) -> csr_matrix:
    """[U, N] sparse: each user's last n_anchors distinct items at 1 / (1 + recency)."""
    rows, cols, vals = [], [], []
    for u, h in enumerate(histories):
        rev = h[::-1]
        _, first = np.unique(rev, return_index=True)
        a = rev[np.sort(first)][:n_anchors]
        rows += [u] * len(a)
        cols += a.tolist()
        vals += (1.0 / (1.0 + np.arange(len(a)))).tolist()
    return csr_matrix((vals, (rows, cols)), shape=(len(histories), n_items))


def ndcg10(scores: np.ndarray, histories: list[np.ndarray], targets: np.ndarray) -> float:
    """scores [U, N]; history masked; the target's rank among the rest."""
    gains = []
    for u, h in enumerate(histories):
        s = scores[u].copy()
        s[h] = -np.inf
        rank = int((s >= s[targets[u]]).sum()) - 1  # ties count against the target (zeros in the full table)
        gains.append(1 / np.log2(rank + 2) if rank < 10 else 0.0)
    return float(np.mean(gains))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--next-item", type=Path, required=True, help="a bench/next_item.py work folder (WORK/DATASET)")
    ap.add_argument("--ranks", default="32,64,128,256,512")
    ap.add_argument("--anchors", type=int, default=3, help="retrieve.covis_anchors")
    a = ap.parse_args()
    feats = next((a.next_item / "work" / "runs").glob("*/main/features"))
    cov = pq.read_table(feats / "full" / "covisitation").to_pandas()
    seqs = pq.read_table(feats / "full" / "sequences", columns=["user_id", "items"]).to_pandas()
    tg = pq.read_table(a.next_item / "targets.parquet").to_pandas()
    ids = np.unique(np.concatenate([cov.item_id, cov.neighbor_id, np.concatenate(seqs["items"].to_numpy()),
                                    tg.item_id]))  # fmt: skip
    pos = {x: i for i, x in enumerate(ids)}
    n = len(ids)
    C = csr_matrix((cov.score.to_numpy(), ([pos[x] for x in cov.item_id], [pos[x] for x in cov.neighbor_id])),
                   shape=(n, n))  # fmt: skip
    target_of = dict(zip(tg.user_id, tg.item_id, strict=True))
    seqs = seqs[seqs.user_id.isin(target_of)]
    hist = [np.array([pos[x] for x in items]) for items in seqs["items"]]
    targets = np.array([pos[target_of[u]] for u in seqs.user_id])
    W = anchor_weights(hist, n, a.anchors)  # [U, N]
    print(f"{len(hist)} users, {n} items, {C.nnz} co-visitation pairs")
    print("| table | NDCG@10 | seconds |")
    print("|---|---:|---:|")
    t0 = time.time()
    print(f"| full (the source) | {ndcg10((W @ C).toarray(), hist, targets):.4f} | {time.time() - t0:.1f} |")
    for k in [int(x) for x in a.ranks.split(",")]:
        t0 = time.time()
        U, S, Vt = svds(C.astype(np.float64), k=min(k, n - 1))  # C ~ U diag(S) Vt
        scores = (W @ (U * S)) @ Vt  # [U, N]
        print(f"| rank {k} | {ndcg10(np.asarray(scores), hist, targets):.4f} | {time.time() - t0:.1f} |", flush=True)


if __name__ == "__main__":
    main()
