"""EASE (Steck 2019): a linear item-item model in closed form (numpy and scipy, no torch).

    B = I - P / diag(P),  P = (X^T X + lam I)^-1,  diag(B) = 0

X is the binary user x item matrix of a split's histories, over the M items with events
(the solve is O(M^3) time and M^2 memory, so only for catalogs up to a limit). A user's
score for item j is sum over the user's history items h of B[h, j].

Two uses: the evaluation's `ease` baseline (the dense B, exact) and the `item_item`
candidate source (recsys/retrieve.py), which reads B fitted once a night by the retrieve
stage on the models' split and kept sparse: each item's n largest |B| entries. On
ml-latest-small (the rank split's 610 label users, 7,452 items) the dense B put a label
item in the top 50 for 27.1% of users, 200 entries per item 26.1%, 100 25.1%, 100
positive-only 23.4%; the dense model's 50 best added to the other sources' candidates
took the share of label users with a label item among them from 44.8% to 48.9% (52.6%
with 100).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import sparse

from recsys.features import Sequences


def binary_matrix(seqs: Sequences, col: np.ndarray, n_cols: int, rows: np.ndarray | None = None) -> sparse.csr_matrix:
    """[len(rows), n_cols] float32 1 where the user's history holds the item (a repeat
    counts once). col [N] maps catalog rows to columns (-1 = no column); rows: the users'
    rows in seqs (default every user)."""
    rows = np.arange(len(seqs)) if rows is None else np.asarray(rows, dtype=np.int64)
    lens = seqs.lengths()[rows]
    starts = seqs.offsets[rows]
    parts = [seqs.items[a : a + n] for a, n in zip(starts, lens, strict=True)]
    flat: np.ndarray = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)
    r = np.repeat(np.arange(len(rows)), lens)
    c = col[flat]
    keep = c >= 0
    X = sparse.csr_matrix((np.ones(int(keep.sum()), dtype=np.float32), (r[keep], c[keep])),
                          shape=(len(rows), n_cols))  # fmt: skip
    X.data[:] = 1.0  # duplicates were summed on construction
    return X


def fit(seqs: Sequences, n_all: int, lam: float, max_items: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(items [M] catalog rows with events, B [M, M] float32 with a zero diagonal), or
    None when there are no events or more than max_items items with events."""
    items = np.unique(seqs.items)
    if len(items) == 0 or len(items) > max_items:
        return None
    col = np.full(n_all, -1, dtype=np.int64)
    col[items] = np.arange(len(items))
    X = binary_matrix(seqs, col, len(items))
    G = (X.T @ X).toarray().astype(np.float64)  # [M, M]
    G[np.diag_indices_from(G)] += lam
    P = np.linalg.inv(G)
    B = (P / -np.diag(P)).astype(np.float32)
    B[np.diag_indices_from(B)] = 0.0
    return items, B


def sparsify(items: np.ndarray, B: np.ndarray, n_neighbors: int, n_all: int) -> sparse.csr_matrix:
    """[n_all, n_all] CSR over catalog rows keeping each row's n_neighbors largest |B|
    entries (negative ones included: they are part of what EASE learned)."""
    M = len(items)
    n = min(n_neighbors, max(M - 1, 0))
    if n == 0:
        return sparse.csr_matrix((n_all, n_all), dtype=np.float32)
    top = np.argpartition(-np.abs(B), n - 1, axis=1)[:, :n]  # [M, n] columns
    vals = np.take_along_axis(B, top, 1)
    return sparse.csr_matrix((vals.ravel(), (np.repeat(items, n), items[top].ravel())), shape=(n_all, n_all))


def save(path: Path, matrix: sparse.csr_matrix, item_ids: np.ndarray) -> None:
    """The sparse B with the catalog's item ids (rows and columns are their positions)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    m = matrix.tocoo()
    np.savez(path, row=m.row.astype(np.int64), col=m.col.astype(np.int64), val=m.data.astype(np.float32),
             item_ids=np.asarray(item_ids, dtype=str))  # fmt: skip


def load(path: Path, item_ids: np.ndarray) -> sparse.csr_matrix:
    """The saved B over this catalog's rows (item_ids [N]); entries of items the catalog
    no longer holds are dropped."""
    z = np.load(path)
    pos = {x: i for i, x in enumerate(item_ids)}
    remap = np.array([pos.get(x, -1) for x in z["item_ids"].tolist()], dtype=np.int64)
    r, c = remap[z["row"]], remap[z["col"]]
    ok = (r >= 0) & (c >= 0)
    n = len(item_ids)
    return sparse.csr_matrix((z["val"][ok], (r[ok], c[ok])), shape=(n, n))
