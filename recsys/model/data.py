"""Feature tables (written by the aggregate stage) -> index arrays for torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from recsys.model.encoder import item_text


@dataclass
class Catalog:
    ids: np.ndarray  # [N] str, sorted: row i is item index i everywhere downstream
    texts: list[str]  # [N]
    category: np.ndarray  # [N] str ('' when unknown)
    available: np.ndarray  # [N] bool
    created_at: np.ndarray  # [N] datetime64[us] (NaT when unknown)
    title: np.ndarray  # [N] str

    def index(self) -> pd.Index:
        return pd.Index(self.ids)


def load_catalog(path: Path) -> Catalog:
    df = pq.read_table(path).to_pandas()
    df = df.sort_values("item_id", kind="stable").reset_index(drop=True)
    texts = [
        item_text(t, c, b, d)
        for t, c, b, d in zip(df["title"], df["category"], df["brand"], df["description"], strict=True)
    ]
    created = pd.to_datetime(df["created_at"], utc=True).dt.tz_localize(None).to_numpy(dtype="datetime64[us]")
    return Catalog(
        ids=df["item_id"].to_numpy(dtype=object),
        texts=texts,
        category=df["category"].fillna("").to_numpy(dtype=object),
        available=df["available"].fillna(True).to_numpy(dtype=bool),
        created_at=created,
        title=df["title"].to_numpy(dtype=object),
    )


@dataclass
class Sequences:
    user_ids: np.ndarray  # [U] str
    offsets: np.ndarray  # [U+1] int64 into the flat arrays
    items: np.ndarray  # [E] int64 catalog index (-1 = not in catalog; dropped)
    types: np.ndarray  # [E] int64 event-type index (1-based; 0 = pad)
    ts: np.ndarray  # [E] int64 seconds

    def __len__(self) -> int:
        return len(self.user_ids)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, u: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a, b = self.offsets[u], self.offsets[u + 1]
        return self.items[a:b], self.types[a:b], self.ts[a:b]


def load_sequences(path: Path, item_index: pd.Index, type_names: list[str]) -> Sequences:
    t = pq.read_table(path).sort_by("user_id")
    items = t.column("items").combine_chunks()
    types = t.column("types").combine_chunks()
    ts = t.column("ts").combine_chunks()
    flat_items = item_index.get_indexer(items.values.to_numpy(zero_copy_only=False))
    tmap = pd.Index(type_names)
    flat_types = tmap.get_indexer(types.values.to_numpy(zero_copy_only=False)) + 1
    flat_ts = pc.cast(ts.values, pa.timestamp("us")).cast(pa.int64()).to_numpy(zero_copy_only=False) // 1_000_000
    offsets = items.offsets.to_numpy()
    keep = flat_items >= 0
    if not keep.all():
        # Items that left the catalog are dropped from histories (the aggregate stage
        # already quarantined events on unknown items; this covers catalog changes).
        kept_before = np.concatenate([[0], np.cumsum(keep)])  # [E+1]
        offsets = kept_before[offsets]
        flat_items, flat_types, flat_ts = flat_items[keep], flat_types[keep], flat_ts[keep]
    return Sequences(
        user_ids=t.column("user_id").to_numpy(zero_copy_only=False).astype(object),
        offsets=offsets.astype(np.int64),
        items=flat_items.astype(np.int64),
        types=flat_types.astype(np.int64),
        ts=flat_ts.astype(np.int64),
    )


def pad_batch(
    seqs: Sequences, rows: np.ndarray, max_len: int, drop_last: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-aligned padded batch of the last max_len steps of each row.

    Returns items, types, ts (each [B, L] long) and valid [B, L] bool, L = longest row.
    drop_last removes each row's final drop_last steps (the validation input).
    """
    parts = []
    for u in rows:
        it, ty, ts = seqs.row(int(u))
        if drop_last:
            it, ty, ts = it[:-drop_last], ty[:-drop_last], ts[:-drop_last]
        parts.append((it[-max_len:], ty[-max_len:], ts[-max_len:]))
    L = max(1, max((len(p[0]) for p in parts), default=1))
    B = len(rows)
    items = np.zeros((B, L), dtype=np.int64)
    types = np.zeros((B, L), dtype=np.int64)
    tss = np.zeros((B, L), dtype=np.int64)
    valid = np.zeros((B, L), dtype=bool)
    for b, (it, ty, ts) in enumerate(parts):
        n = len(it)
        items[b, :n], types[b, :n], tss[b, :n], valid[b, :n] = it, ty, ts, True
    return torch.from_numpy(items), torch.from_numpy(types), torch.from_numpy(tss), torch.from_numpy(valid)
