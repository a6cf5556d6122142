"""Embed every catalog item (new ones from text alone) and every user with history.

Writes embeddings/items.npy [N, d] float32 and item_bias.npy [N] with items.parquet
(item_id, row) and scoring.json (temperature), and for
each feature split (full = serving: every user; train = evaluation and rank = the
ranker's training state: the users their readers score, see split_users)
users_<split>.npy [U, d] with users_<split>.parquet (user_id, row). All vectors are
L2-normalised. A seed ensemble of M models writes each vector as its members' vectors
concatenated / sqrt(M) ([N, M * d]; see combine).
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
from recsys.features import Catalog, feature_splits, load_catalog, load_sequences
from recsys.model.encoder import PrefixCache, TextStore
from recsys.model.train import Bundle, load_bundles
from recsys.rundir import RunDir
from recsys.shards import serving_users, shard_count

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


def split_user_vectors(cfg: Config, rd: RunDir, bundles: list[Bundle], tables: list[torch.Tensor],
                       catalog: Catalog, split: str) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(user ids [U], vectors [U, M * d] float32) of a split's users, one block per
    member, each from its own item table. The serving split is read one user shard at a
    time (the count the sharded stages will use): its histories as Python strings grew
    the stage with the shop (300k users: 8.63 GiB in one read, 2.70 GiB by shard, in the
    same time)."""
    users = split_users(cfg, rd, split)
    n = shard_count(cfg, serving_users(rd)) if split == "full" and users is None else 1
    ids, vecs = [], []
    for i in range(n):
        seqs = load_sequences(rd.require("features", split, "sequences"), catalog.index(), bundles[0].type_names,
                              shard=(i, n) if n > 1 else None, users=users)  # fmt: skip
        label = f"embed: users ({split}{f', shard {i + 1}/{n}' if n > 1 else ''})"
        with torch.no_grad():
            u = [b.user_vectors(seqs, t, cfg.model.max_seq_len, batch_size=1024, progress=label if k == 0 else None)
                 for k, (b, t) in enumerate(zip(bundles, tables, strict=True))]  # fmt: skip
        ids.append(seqs.user_ids)
        vecs.append(combine([x.cpu().numpy() for x in u]))
        del seqs
    return np.concatenate(ids), np.concatenate(vecs)


def combine(vecs: list[np.ndarray]) -> np.ndarray:
    """Members' unit vectors [n, d] each -> [n, M * d] float32, concatenated / sqrt(M):
    the inner product of two combined vectors is the mean of the members' inner
    products, so one FAISS search serves the ensemble's mean score, and unit vectors
    stay unit."""
    return (np.concatenate(vecs, axis=1) / np.sqrt(len(vecs))).astype(np.float32)


def embed_all(cfg: Config, rd: RunDir) -> dict[str, Any]:
    t0 = time.time()
    catalog = load_catalog(rd.require("features", "catalog"))
    bundles = load_bundles(cfg, rd)
    if list(bundles[0].item_ids) != list(catalog.ids):
        raise ValueError("the model's item vocabulary differs from this run's catalog: re-run train for this date")
    store = None
    for bundle in bundles:
        bundle.texts = catalog.texts
        enc = bundle.model.item.encoder
        if enc.split > 0:
            # The frozen part of the encoder is shared with training (and by the members):
            # reuse its text vectors.
            store = store or PrefixCache(enc, catalog.texts, store=TextStore(cfg.cache_dir() / "text", enc))
            bundle.cache = store
    out = rd.path("embeddings")
    out.mkdir(parents=True, exist_ok=True)
    t = time.time()
    tables, biases = zip(*(b.item_table(batch_size=256) for b in bundles), strict=True)  # M x ([N, d], [N])
    items_s = time.time() - t
    np.save(out / "items.npy", combine([x.cpu().numpy() for x in tables]))
    # The mean score's bias is the members' mean bias.
    np.save(out / "item_bias.npy", torch.stack(biases).mean(0).cpu().numpy().astype(np.float32))
    # Retrieval scores <u, v> / temperature + bias, exactly as training did.
    jsonio.write(out / "scoring.json", {"temperature": cfg.train.temperature})
    pq.write_table(pa.table({"item_id": catalog.ids.astype(str), "row": np.arange(len(catalog.ids))}),
                   out / "items.parquet")  # fmt: skip
    info: dict[str, Any] = {
        "items": len(catalog.ids),
        "items_per_s": round(len(catalog.ids) / max(items_s, 1e-9), 1),
        "device": str(bundles[0].device),
        "members": len(bundles),
    }
    log.info("embed: %d items in %.1fs (%.0f items/s)", len(catalog.ids), items_s, info["items_per_s"])
    for split in feature_splits(cfg):
        t = time.time()
        ids, vecs = split_user_vectors(cfg, rd, bundles, list(tables), catalog, split)
        np.save(out / f"users_{split}.npy", vecs)
        pq.write_table(pa.table({"user_id": ids.astype(str), "row": np.arange(len(ids))}),
                       out / f"users_{split}.parquet")  # fmt: skip
        info[f"users_{split}"] = len(ids)
        log.info("embed: %d users (%s) in %.1fs", len(ids), split, time.time() - t)
    info["seconds"] = round(time.time() - t0, 1)
    return info
