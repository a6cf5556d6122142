"""Padded torch batches over the feature arrays of recsys.features."""

from __future__ import annotations

import numpy as np
import torch

from recsys.features import Catalog, Sequences, load_catalog, load_sequences  # noqa: F401  (re-exported)


def pad_batch(
    seqs: Sequences, rows: np.ndarray, max_len: int, drop_last: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-aligned padded batch of the last max_len steps of each row.

    Returns items, types, ts (each [B, L] long) and valid [B, L] bool, L = longest row.
    drop_last removes each row's final drop_last steps (the validation input).
    """
    ends = np.maximum(seqs.lengths()[rows] - drop_last, 0)  # [B]
    wins = np.stack([np.asarray(rows, dtype=np.int64), np.maximum(ends - max_len, 0), ends], 1)
    return pad_windows(seqs, wins)


def windows(seqs: Sequences, rows: np.ndarray, max_len: int, drop_last: int = 0) -> np.ndarray:
    """Cut each row's history (minus its last drop_last steps) into windows of at most
    max_len steps that overlap by one step, aligned to the end: inside a window step t
    predicts t + 1, so every transition of every user is a training position exactly
    once per epoch (SASRec sees only the last max_len). Returns [W, 3] int64
    (row, start, end) with end exclusive; rows with fewer than two steps give none."""
    lens = seqs.lengths()[rows] - drop_last  # [R]
    out = []
    for r, n in zip(rows, lens, strict=True):
        end = int(n)
        while end >= 2:
            start = max(0, end - max_len)
            out.append((int(r), start, end))
            end = start + 1
    return np.array(out, dtype=np.int64).reshape(-1, 3)


def pad_windows(seqs: Sequences, wins: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-aligned padded batch of windows [B, 3] -> items, types, ts [B, L] long and
    valid [B, L] bool, L = the longest window."""
    L = max(1, int((wins[:, 2] - wins[:, 1]).max())) if len(wins) else 1
    B = len(wins)
    items = np.zeros((B, L), dtype=np.int64)
    types = np.zeros((B, L), dtype=np.int64)
    tss = np.zeros((B, L), dtype=np.int64)
    valid = np.zeros((B, L), dtype=bool)
    for b, (r, s, e) in enumerate(wins):
        a = seqs.offsets[r]
        n = e - s
        items[b, :n] = seqs.items[a + s : a + e]
        types[b, :n] = seqs.types[a + s : a + e]
        tss[b, :n] = seqs.ts[a + s : a + e]
        valid[b, :n] = True
    return torch.from_numpy(items), torch.from_numpy(types), torch.from_numpy(tss), torch.from_numpy(valid)
