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
    wins = np.stack([np.asarray(rows, dtype=np.int64), np.maximum(ends - max_len, 0), ends], 1)  # [B, 3]
    return pad_windows(seqs, wins)


def windows(seqs: Sequences, rows: np.ndarray, max_len: int, drop_last: int = 0, min_context: int = 1) -> np.ndarray:
    """Cut each row's history (minus its last drop_last steps) into windows of at most
    max_len steps, aligned to the end, so that every transition of every user is a
    training position exactly once per epoch (SASRec sees only the last max_len): inside
    a window, position t predicts step t + 1 from the steps before it in the window.

    min_context: each counted prediction sees at least this many steps (or the user's
    whole history before it, near the start). Windows then overlap by min_context steps
    and a window's first `first` positions only give context; with 1 they overlap by one
    step and every position counts. At serving time a user with a long history is read
    through its last max_len steps, so training on short contexts alone would fit a
    situation the model rarely meets.
    Returns [W, 4] int64 (row, start, end, first): end exclusive, predictions count
    from position `first` of the window on; rows with fewer than two steps give none."""
    ctx = max(1, min(min_context, max_len - 1))
    lens = seqs.lengths()[rows] - drop_last  # [R]
    out = []
    for r, n in zip(rows, lens, strict=True):
        end = int(n)
        while end >= 2:
            start = max(0, end - max_len)
            first = 0 if start == 0 else ctx - 1  # target start + ctx is the first counted
            out.append((int(r), start, end, first))
            end = start + first + 1
    return np.array(out, dtype=np.int64).reshape(-1, 4)


def length_batches(wins: np.ndarray, batch_size: int, rng: np.random.Generator, pool: int) -> list[np.ndarray]:
    """One epoch's batches of windows [W, 4+] (row, start, end, ...): every window once,
    in random order, each batch about batch_size windows' worth of steps.

    pool 0: batch_size windows per batch in random order (each batch pads to its
    longest window). pool > 0: windows are shuffled, cut into pools of pool x
    batch_size, sorted by length inside each pool, and cut into batches whose padded
    size, windows x the longest, stays within batch_size x the mean window length; the
    batches are then shuffled. A batch of short windows holds more of them, so every
    step computes about the same number of steps, nearly all of them real, and each
    step's loss averages over about as many positions as before.
    Returns a list of index arrays into wins."""
    order = rng.permutation(len(wins))
    if pool <= 0 or len(wins) == 0:
        return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    lengths = (wins[:, 2] - wins[:, 1]).astype(np.int64)  # [W]
    budget = max(1, round(float(batch_size * lengths.mean())))  # padded steps per batch
    batches: list[np.ndarray] = []
    for a in range(0, len(order), pool * batch_size):
        chunk = order[a : a + pool * batch_size]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]  # longest first
        s = 0
        while s < len(chunk):
            n = max(1, budget // int(lengths[chunk[s]]))  # the first is the batch's longest
            batches.append(chunk[s : s + n])
            s += n
    return [batches[i] for i in rng.permutation(len(batches))]


def pad_windows(seqs: Sequences, wins: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-aligned padded batch of windows [B, 3+] (row, start, end, ...) -> items, types, ts [B, L] long and
    valid [B, L] bool, L = the longest window."""
    L = max(1, int((wins[:, 2] - wins[:, 1]).max())) if len(wins) else 1
    B = len(wins)
    items = np.zeros((B, L), dtype=np.int64)
    types = np.zeros((B, L), dtype=np.int64)
    tss = np.zeros((B, L), dtype=np.int64)
    valid = np.zeros((B, L), dtype=bool)
    for b, (r, s, e) in enumerate(wins[:, :3]):
        a = seqs.offsets[r]
        n = e - s
        items[b, :n] = seqs.items[a + s : a + e]
        types[b, :n] = seqs.types[a + s : a + e]
        tss[b, :n] = seqs.ts[a + s : a + e]
        valid[b, :n] = True
    return torch.from_numpy(items), torch.from_numpy(types), torch.from_numpy(tss), torch.from_numpy(valid)
