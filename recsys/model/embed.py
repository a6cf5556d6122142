"""Embed every catalog item (new ones from text alone) and every user with history.

Writes embeddings/items.npy [N, d] float32 and item_bias.npy [N] with items.parquet
(item_id, row) and scoring.json (temperature), and for
each feature split (full = serving: every user; train = evaluation and rank = the
ranker's training state: the users their readers score, see split_users)
users_<split>.npy [U, d] with users_<split>.parquet (user_id, row). All vectors are
L2-normalised.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from recsys import jsonio
from recsys.config import Config
from recsys.features import feature_splits, load_catalog, load_sequences
from recsys.model.encoder import PrefixCache, TextStore
from recsys.model.train import load_bundle
from recsys.rundir import RunDir

log = logging.getLogger(__name__)


def split_users(cfg: Config, rd: RunDir, split: str) -> np.ndarray | None:
    """Whose vectors a split needs: every user to serve (full); the users evaluate scores
    (train) and the ranker's training users (rank), which is all their readers look up
    (a third of the stage's time at 100k users went to embedding each split whole)."""
    if split == "train":
        from recsys.evaluation.evaluate import candidate_users

        return candidate_users(cfg, rd)
    if split == "rank":
        from recsys.rank import rank_train_users

        return rank_train_users(cfg, rd)
    return None


def embed_all(cfg: Config, rd: RunDir) -> dict[str, Any]:
    t0 = time.time()
    catalog = load_catalog(rd.require("features", "catalog"))
    bundle = load_bundle(cfg, rd)
    if list(bundle.item_ids) != list(catalog.ids):
        raise ValueError("the model's item vocabulary differs from this run's catalog: re-run train for this date")
    bundle.texts = catalog.texts
    enc = bundle.model.item.encoder
    if enc.split > 0:
        # The frozen part of the encoder is shared with training: reuse its text vectors.
        bundle.cache = PrefixCache(enc, catalog.texts, store=TextStore(cfg.cache_dir() / "text", enc))
    out = rd.path("embeddings")
    out.mkdir(parents=True, exist_ok=True)
    t = time.time()
    table, bias = bundle.item_table(batch_size=256)  # [N, d], [N]
    items_s = time.time() - t
    np.save(out / "items.npy", table.cpu().numpy().astype(np.float32))
    np.save(out / "item_bias.npy", bias.cpu().numpy().astype(np.float32))
    # Retrieval scores <u, v> / temperature + bias, exactly as training did.
    jsonio.write(out / "scoring.json", {"temperature": cfg.train.temperature})
    pq.write_table(pa.table({"item_id": catalog.ids.astype(str), "row": np.arange(len(catalog.ids))}),
                   out / "items.parquet")  # fmt: skip
    info: dict[str, Any] = {
        "items": len(catalog.ids),
        "items_per_s": round(len(catalog.ids) / max(items_s, 1e-9), 1),
        "device": str(bundle.device),
    }
    log.info("embed: %d items in %.1fs (%.0f items/s)", len(catalog.ids), items_s, info["items_per_s"])
    splits = feature_splits(cfg)
    for split in splits:
        seqs = load_sequences(rd.require("features", split, "sequences"), catalog.index(), bundle.type_names,
                              users=split_users(cfg, rd, split))  # fmt: skip
        t = time.time()
        with torch.no_grad():
            users = bundle.user_vectors(
                seqs, table, cfg.model.max_seq_len, batch_size=1024, progress=f"embed: users ({split})"
            )
        np.save(out / f"users_{split}.npy", users.cpu().numpy().astype(np.float32))
        pq.write_table(pa.table({"user_id": seqs.user_ids.astype(str), "row": np.arange(len(seqs))}),
                       out / f"users_{split}.parquet")  # fmt: skip
        info[f"users_{split}"] = len(seqs)
        log.info("embed: %d users (%s) in %.1fs", len(seqs), split, time.time() - t)
    info["seconds"] = round(time.time() - t0, 1)
    return info
