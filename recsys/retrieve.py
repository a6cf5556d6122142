"""Candidate generation: a vector index and several candidate sources behind one interface.

Every source implements `CandidateSource.generate(users) -> CandidateFrame` with columns
user_id, item_id, score, source, source_rank, anchor (the item or category that explains
the candidate, or ""). Every source respects the same contract: no excluded item, no
unavailable item, at most k rows per user, ranks 1..n by descending score. The contract
tests in tests/test_retrieve.py run against every source.

Sources: two_tower (FAISS inner product over the item tower), covisitation (what
followed the user's recent items), trending (in the user's categories, else the shop), new_arrivals
(recent items ranked by the user vector: cold start), long_tail (items known by their
text alone, for the discover section), item_item (EASE's linear item-item model over
the user's whole history, recsys/ease.py, for catalogs small enough to fit it),
popularity (also the baseline).
`blend` fuses them with weighted reciprocal-rank fusion into one ranked list per user.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from recsys.config import Config, RetrieveConfig
from recsys.device import faiss_available, faiss_num_gpus
from recsys.features import Catalog, Sequences, load_catalog, load_sequences, split_cutoff
from recsys.progress import Progress
from recsys.rundir import RunDir
from recsys.shards import PartWriter, batches, part_path

log = logging.getLogger(__name__)
CANDIDATE_COLUMNS = ["user_id", "item_id", "score", "source", "source_rank", "anchor"]


# ---- vector index -------------------------------------------------------------------
class VectorIndex(Protocol):
    backend: str

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries [Q, d] float32 -> (scores [Q, k] float32, rows [Q, k] int64; -1 = none)."""
        ...


class FaissIndex:
    """Exact inner product (IndexFlatIP) or IVF-Flat above a catalog size; on the GPU
    when faiss sees one."""

    def __init__(self, vectors: np.ndarray, cfg: RetrieveConfig) -> None:
        import faiss

        x = np.ascontiguousarray(vectors, dtype=np.float32)
        d = x.shape[1]
        use_ivf = cfg.index == "ivf" or (cfg.index == "auto" and len(x) >= cfg.ivf_min_items)
        if use_ivf:
            nlist = max(1, min(cfg.ivf_nlist, len(x) // 39))  # faiss wants >= 39 points per list
            quant = faiss.IndexFlatIP(d)
            index: Any = faiss.IndexIVFFlat(quant, d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(x)
            index.nprobe = min(cfg.ivf_nprobe, nlist)
            kind = f"ivf{nlist}"
        else:
            index = faiss.IndexFlatIP(d)
            kind = "flat"
        index.add(x)
        self.gpu = faiss_num_gpus() > 0
        if self.gpu:
            res = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(res, 0, index)
        self.index = index
        self.backend = f"faiss-{'gpu' if self.gpu else 'cpu'}-{kind}"

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.index.ntotal)
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, rows.astype(np.int64)

    @property
    def trained(self) -> bool:
        """Whether building it trained something (IVF's lists), i.e. it is worth saving."""
        return "ivf" in self.backend

    def write(self, path: Path) -> None:
        import faiss

        path.parent.mkdir(parents=True, exist_ok=True)
        faiss.write_index(faiss.index_gpu_to_cpu(self.index) if self.gpu else self.index, str(path))

    @classmethod
    def read(cls, path: Path) -> FaissIndex:
        """An index write() saved, on the GPU when faiss sees one (as a built one is)."""
        import faiss

        self = cls.__new__(cls)
        index = faiss.read_index(str(path))
        kind = f"ivf{index.nlist}" if hasattr(index, "nlist") else "flat"
        self.gpu = faiss_num_gpus() > 0
        self.index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index) if self.gpu else index
        self.backend = f"faiss-{'gpu' if self.gpu else 'cpu'}-{kind}"
        return self


class TorchIndex:
    """Exact inner product with a matmul + top-k: the GPU path where faiss-gpu is not
    installed, and a reference implementation for tests."""

    def __init__(self, vectors: np.ndarray, device: str | None = None) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.items = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(self.device)
        self.backend = f"torch-{self.device.type}-exact"

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        k = min(k, self.items.shape[0])
        q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(self.device)
        s, r = (q @ self.items.T).topk(k, dim=1)  # [Q, N] -> [Q, k]
        return s.float().cpu().numpy(), r.cpu().numpy().astype(np.int64)


def build_index(vectors: np.ndarray, cfg: RetrieveConfig) -> VectorIndex:
    if cfg.backend == "faiss" or (cfg.backend == "auto" and faiss_available()):
        return FaissIndex(vectors, cfg)
    return TorchIndex(vectors)


# The serving index, trained once a night by prepare_retrieve where it trains (IVF) and
# read by every shard: each of the 20 shards at 1M users trained the same IVF lists on
# the same 132k vectors. Its sidecar holds a hash of the vectors it was built from, so
# an index of other vectors is never read.
INDEX_FILE = ("retrieve", "index_full.faiss")


def _vectors_key(vectors: np.ndarray) -> str:
    import hashlib

    return hashlib.blake2b(np.ascontiguousarray(vectors, dtype=np.float32).tobytes(), digest_size=16).hexdigest()


def save_index(index: VectorIndex, vectors: np.ndarray, path: Path) -> bool:
    """Keep a trained faiss index of vectors [M, d] at path; False (nothing kept) for an
    index that trains nothing (flat, torch), which a shard builds as fast as it reads."""
    path.unlink(missing_ok=True)
    if not isinstance(index, FaissIndex) or not index.trained:
        return False
    index.write(path)
    path.with_suffix(".json").write_text(json.dumps({"vectors": _vectors_key(vectors), "rows": len(vectors)}))
    return True


def saved_or_built_index(vectors: np.ndarray, cfg: RetrieveConfig, path: Path | None) -> VectorIndex:
    """The index saved at path when it was built from these very vectors, else a new one."""
    meta = path.with_suffix(".json") if path is not None else None
    if path is not None and meta is not None and path.is_file() and meta.is_file():
        m = json.loads(meta.read_text())
        if m.get("rows") == len(vectors) and m.get("vectors") == _vectors_key(vectors):
            return FaissIndex.read(path)
        log.warning("retrieve: %s was built from other vectors; building the index again", path)
    return build_index(vectors, cfg)


# ---- context -------------------------------------------------------------------------
@dataclass
class Context:
    """Everything a source may read, for one split (train = evaluation, full = serving)."""

    cfg: Config
    cutoff: dt.date
    catalog: Catalog
    seqs: Sequences
    user_row: dict[str, int]  # user_id -> row in seqs
    item_stats: pd.DataFrame  # indexed by catalog row: n_events, pop_score, trend_score
    covis: dict[int, tuple[np.ndarray, np.ndarray]]  # item row -> (neighbour rows, scores)
    excluded: dict[str, set[int]]  # user_id -> catalog rows never to show again
    item_vecs: np.ndarray | None = None  # [N, d] unit vectors (similarity, MMR)
    item_bias: np.ndarray | None = None  # [N] learned per-item prior
    temperature: float = 1.0
    user_vecs: dict[str, np.ndarray] = field(default_factory=dict)  # user_id -> [d]
    item_item: Any = None  # [N, N] scipy CSR: the night's sparse EASE B (retrieve/item_item.npz)
    index_file: Path | None = None  # a saved serving index (INDEX_FILE), read if it matches
    _index: VectorIndex | None = None
    _subset_indexes: dict[str, VectorIndex] = field(default_factory=dict)
    _servable: np.ndarray | None = None

    @property
    def servable(self) -> np.ndarray:
        """[N] bool: the item may be shown: available and already created at the cutoff
        (the evaluation context must not see items that appeared after its split)."""
        if self._servable is None:
            ca = self.catalog.created_at
            born = np.isnat(ca) | (ca < np.datetime64(self.cutoff, "us"))
            self._servable = self.catalog.available & born
        return self._servable

    def scoring_items(self, rows: np.ndarray) -> np.ndarray:
        """[n, d+1] item side of the model score: [v / temperature, bias]."""
        assert self.item_vecs is not None
        b = self.item_bias[rows] if self.item_bias is not None else np.zeros(len(rows), dtype=np.float32)
        return np.hstack([self.item_vecs[rows] / self.temperature, b[:, None]]).astype(np.float32)

    def scoring_users(self, users: list[str]) -> np.ndarray:
        """[b, d+1] user side of the model score: [u, 1]."""
        u = np.stack([self.user_vecs[x] for x in users]).astype(np.float32)
        return np.hstack([u, np.ones((len(u), 1), dtype=np.float32)])

    def history(self, user_id: str) -> np.ndarray:
        r = self.user_row.get(user_id)
        return self.seqs.row(r)[0] if r is not None else np.zeros(0, dtype=np.int64)

    def blocked(self, user_id: str) -> set[int]:
        return self.excluded.get(user_id, set())

    def index(self) -> tuple[VectorIndex, np.ndarray]:
        """Index over servable items; returns (index, index row -> catalog row)."""
        if self._index is None:
            assert self.item_vecs is not None
            rows = np.flatnonzero(self.servable)
            self._index = saved_or_built_index(self.scoring_items(rows), self.cfg.retrieve, self.index_file)
            self._index_rows = rows
        return self._index, self._index_rows

    def subset_index(self, name: str, rows: np.ndarray) -> VectorIndex:
        """An index over catalog rows [M] that source `name` searches, built once per
        context: sources are made again for every user batch, and an IVF index trains
        (seconds) where a flat one only copies."""
        if name not in self._subset_indexes:
            self._subset_indexes[name] = build_index(self.scoring_items(rows), self.cfg.retrieve)
        return self._subset_indexes[name]

    def user_top_categories(self, user_id: str, n: int = 2) -> list[str]:
        h = self.history(user_id)
        if not len(h):
            return []
        cats = self.catalog.category[h[-self.cfg.model.max_seq_len :]]
        # Most frequent first; ties broken by recency (last occurrence).
        stats: dict[str, list[int]] = {}
        for pos, c in enumerate(cats):
            if c:
                e = stats.setdefault(c, [0, 0])
                e[0] += 1
                e[1] = pos
        return sorted(stats, key=lambda c: (stats[c][0], stats[c][1]), reverse=True)[:n]


def load_context(
    cfg: Config,
    rd: RunDir,
    split: str,
    with_vectors: bool = True,
    shard: tuple[int, int] | None = None,
    with_users: bool = True,
    users: np.ndarray | None = None,
) -> Context:
    """The split's context: item-side state (catalog, statistics, co-visitation, item
    vectors) whole, user-side state (sequences, exclusions, user vectors) for shard
    (i, n)'s users only (and of users, when given), every user when both are None, no
    user with with_users=False."""
    from recsys.shards import NO_USERS, read_table

    shard = NO_USERS if not with_users else shard
    catalog = load_catalog(rd.require("features", "catalog"))
    idx = catalog.index()
    seqs = load_sequences(rd.require("features", split, "sequences"), idx, cfg.type_names(), shard, users)
    stats = pq.read_table(rd.require("features", split, "item_stats")).to_pandas()
    stats.index = idx.get_indexer(stats["item_id"])
    stats = stats[stats.index >= 0].reindex(range(len(catalog.ids)))
    stats[["n_events", "pop_score", "trend_score"]] = stats[["n_events", "pop_score", "trend_score"]].fillna(0)
    exc = read_table(rd.require("features", split, "exclusions"), shard, users=users).to_pandas()
    cutoff = split_cutoff(rd.require("features", split))
    ctx = Context(
        cfg=cfg,
        cutoff=cutoff,
        catalog=catalog,
        seqs=seqs,
        user_row={u: i for i, u in enumerate(seqs.user_ids)},
        item_stats=stats,
        covis=load_covisitation(rd.require("features", split, "covisitation"), idx),
        excluded=_exclusions(exc, idx),
    )
    if with_vectors:
        _load_vectors(ctx, rd.require("embeddings"), split, every_user=shard is None and users is None)
    ii = rd.path(*ITEM_ITEM_FILE)
    if cfg.retrieve.source_weights.get("item_item", 0.0) > 0 and ii.is_file():
        from recsys import ease

        ctx.item_item = ease.load(ii, catalog.ids)
    return ctx


def load_covisitation(path: Path, idx: pd.Index) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """item row -> (neighbour rows [m] int64, scores [m] float64), best first."""
    cov = pq.read_table(path).to_pandas()
    a = idx.get_indexer(cov["item_id"])
    b = idx.get_indexer(cov["neighbor_id"])
    ok = (a >= 0) & (b >= 0)
    a, b, sc, rk = a[ok], b[ok], cov["score"].to_numpy(np.float64)[ok], cov["rank"].to_numpy()[ok]
    o = np.lexsort((rk, a))
    a, b, sc = a[o], b[o], sc[o]
    starts = np.flatnonzero(np.r_[True, a[1:] != a[:-1]]) if len(a) else np.zeros(0, dtype=np.int64)
    ends = np.r_[starts[1:], len(a)]
    return {int(a[s]): (b[s:e].astype(np.int64), sc[s:e]) for s, e in zip(starts, ends, strict=True)}


def _exclusions(exc: pd.DataFrame, idx: pd.Index) -> dict[str, set[int]]:
    rows = idx.get_indexer(exc["item_id"])
    excluded: dict[str, set[int]] = defaultdict(set)
    for u, r in zip(exc["user_id"].to_numpy(), rows, strict=True):
        if r >= 0:
            excluded[u].add(int(r))
    return dict(excluded)


def _load_vectors(ctx: Context, emb: Path, split: str, every_user: bool) -> None:
    ctx.item_vecs = np.load(emb / "items.npy")
    if (emb / "item_bias.npy").is_file():
        ctx.item_bias = np.load(emb / "item_bias.npy")
    if (emb / "scoring.json").is_file():
        ctx.temperature = float(json.loads((emb / "scoring.json").read_text())["temperature"])
    # Memory-mapped: a shard copies out only its users' rows.
    uv = np.load(emb / f"users_{split}.npy", mmap_mode="r")  # [U_all, d]
    uids = pq.read_table(emb / f"users_{split}.parquet").column("user_id").to_numpy(zero_copy_only=False)
    if every_user:
        ctx.user_vecs = {u: uv[i] for i, u in enumerate(uids)}
        return
    pos = pd.Index(uids).get_indexer(ctx.seqs.user_ids)
    have = pos >= 0
    vecs = np.asarray(uv[pos[have]])  # [U_shard, d]
    ctx.user_vecs = {u: vecs[j] for j, u in enumerate(ctx.seqs.user_ids[have])}


# ---- sources -------------------------------------------------------------------------
class CandidateSource(Protocol):
    name: str

    @staticmethod
    def reason(anchor: str) -> str: ...

    def generate(self, users: list[str], k: int) -> pd.DataFrame:
        """Candidates for users: CANDIDATE_COLUMNS, <= k rows per user."""
        ...


def _empty_frame() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(
        CANDIDATE_COLUMNS, [object, object, float, object, np.int64, object], strict=True)})  # fmt: skip


def blocked_mask(ctx: Context, users: list[str], rows: np.ndarray) -> np.ndarray:
    """rows [b, m] catalog rows proposed to users [b] -> [b, m] bool: not showable (no
    row, not servable, or excluded for that user)."""
    b, m = rows.shape
    return blocked_pairs(ctx, users, np.repeat(np.arange(b, dtype=np.int64), m), rows.ravel()).reshape(b, m)


def blocked_pairs(ctx: Context, users: list[str], user_pos: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Pairs (users[user_pos[p]], rows[p]), user_pos and rows [P] -> [P] bool: not
    showable. Each user's exclusions are read once, however many pairs it has (the
    co-visitation source used to pass one user per pair: 4.8M set reads for 48k users,
    60% of the source's time), then one search over (user, row) keys."""
    n = len(ctx.catalog.ids)
    bad = (rows < 0) | ~ctx.servable[np.maximum(rows, 0)]
    lists = [np.fromiter(ctx.blocked(u), dtype=np.int64) for u in users]
    sizes = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
    if sizes.sum():
        # Binary search in the sorted keys, not np.isin: isin sorts the queries together
        # with the keys (0.76 vs 0.11 s for 10,000 users x 100 rows against 500,000
        # keys; 20% of a retrieve shard's time at 1M users went to isin).
        keys = np.sort(np.repeat(np.arange(len(users), dtype=np.int64), sizes) * n + np.concatenate(lists))
        q = user_pos.astype(np.int64) * n + rows  # [P]
        bad |= keys[np.minimum(np.searchsorted(keys, q), len(keys) - 1)] == q
    return bad


def top_k_rows(
    ctx: Context, users: list[str], rows: np.ndarray, scores: np.ndarray, k: int, source: str,
    anchors: np.ndarray | None = None,
) -> pd.DataFrame:  # fmt: skip
    """Per user (row of rows / scores [b, m]) the k best showable rows, ties by catalog
    row (= item id order), as a CandidateFrame. Vectorised over the batch."""
    if not len(users) or rows.shape[1] == 0:
        return _empty_frame()
    s = np.where(blocked_mask(ctx, users, rows), -np.inf, scores.astype(np.float64))
    # One row-wise lexsort (score, then row = item id order) over the m proposals (m is
    # k plus the batch's largest exclusion list, at most k + 2000): an argpartition
    # first would break ties at the k-th place arbitrarily.
    part = np.lexsort((rows, -s), axis=1)[:, : min(k, s.shape[1])]  # [b, k]
    r = np.take_along_axis(rows, part, 1)
    v = np.take_along_axis(s, part, 1)
    ok = np.isfinite(v)
    ranks = np.cumsum(ok, axis=1)
    uidx = np.broadcast_to(np.arange(len(users))[:, None], ok.shape)[ok]
    a = np.take_along_axis(anchors, part, 1)[ok] if anchors is not None else np.full(ok.sum(), "", dtype=object)
    return pd.DataFrame({
        "user_id": np.asarray(users, dtype=object)[uidx], "item_id": ctx.catalog.ids[r[ok]], "score": v[ok],
        "source": source, "source_rank": ranks[ok].astype(np.int64), "anchor": a,
    })[CANDIDATE_COLUMNS]  # fmt: skip


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else _empty_frame()


def _batches(users: list[str], size: int, what: str) -> Iterator[list[str]]:
    bar = Progress(len(users), f"retrieve: {what}", "users")
    for i in range(0, len(users), size):
        yield users[i : i + size]
        bar.update(len(users[i : i + size]))
    bar.close()


def _max_blocked(ctx: Context, users: list[str]) -> int:
    # Over-fetch by the batch's largest exclusion list so k survive filtering.
    return min(max((len(ctx.blocked(u)) for u in users), default=0), 2000)


class TwoTowerSource:
    name = "two_tower"

    @staticmethod
    def reason(anchor: str) -> str:
        """The reason shown on a slot this source filled (anchor: its title or category)."""
        return "Picked for your interests"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def generate(self, users: list[str], k: int) -> pd.DataFrame:
        ctx = self.ctx
        have = [u for u in users if u in ctx.user_vecs]
        if not have:
            return _empty_frame()
        index, index_rows = ctx.index()
        return search_index(ctx, index, index_rows, have, k, self.name)


def search_index(ctx: Context, index: VectorIndex, index_rows: np.ndarray, users: list[str], k: int,
                 source: str) -> pd.DataFrame:  # fmt: skip
    """Top k showable items per user by the model score, through a vector index over
    index_rows (catalog rows [M]): batched queries, over-fetched by the batch's
    largest exclusion list."""
    frames = []
    for batch in _batches(users, ctx.cfg.retrieve.query_batch_size, source):
        scores, found = index.search(ctx.scoring_users(batch), k + _max_blocked(ctx, batch))  # [b, k+extra]
        rows = np.where(found >= 0, index_rows[np.maximum(found, 0)], -1)
        frames.append(top_k_rows(ctx, batch, rows, scores, k, source))
    return _concat(frames)


class CovisitationSource:
    """What was viewed next to the user's most recent items (anchors; mostly after them,
    see retrieve.covis_backward), decayed by anchor recency."""

    name = "covisitation"

    @staticmethod
    def reason(anchor: str) -> str:
        """The reason shown on a slot this source filled (anchor: its title or category)."""
        return f"Often viewed with {anchor}"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        # CSR over item rows: neighbours of item a are nbr[off[a]:off[a+1]], best first.
        n = len(ctx.catalog.ids)
        lens = np.zeros(n, dtype=np.int64)
        for a, (b, _s) in ctx.covis.items():
            lens[a] = len(b)
        self.off = np.r_[0, np.cumsum(lens)]
        keys = sorted(ctx.covis)
        self.nbr = np.concatenate([ctx.covis[a][0] for a in keys]) if keys else np.zeros(0, np.int64)
        self.val = np.concatenate([ctx.covis[a][1] for a in keys]) if keys else np.zeros(0)

    def anchors(self, users: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each user's last covis_anchors distinct items, most recent first:
        (user position [A], anchor row [A], recency j [A] = 0 for the latest)."""
        ctx = self.ctx
        n_anchors = ctx.cfg.retrieve.covis_anchors
        u_pos, a_row, a_j = [], [], []
        for p, u in enumerate(users):
            h = ctx.history(u)[-4 * n_anchors - 16 :][::-1]  # recent tail is enough
            _, first = np.unique(h, return_index=True)
            a = h[np.sort(first)][:n_anchors]
            u_pos.append(np.full(len(a), p))
            a_row.append(a)
            a_j.append(np.arange(len(a)))
        cat = np.concatenate
        return cat(u_pos).astype(np.int64), cat(a_row).astype(np.int64), cat(a_j).astype(np.int64)

    def generate(self, users: list[str], k: int) -> pd.DataFrame:
        frames = []
        for batch in _batches(users, 20_000, self.name):
            frames.append(self._batch(batch, k))
        return _concat(frames)

    def _batch(self, users: list[str], k: int) -> pd.DataFrame:
        ctx = self.ctx
        up, ar, aj = self.anchors(users)
        if not len(up):
            return _empty_frame()
        cnt = self.off[ar + 1] - self.off[ar]  # [A] neighbours per anchor
        src = np.repeat(np.arange(len(ar)), cnt)  # [P] anchor index of each pair
        pos = np.arange(cnt.sum()) - np.repeat(np.r_[0, np.cumsum(cnt)[:-1]], cnt) + self.off[ar][src]
        df = pd.DataFrame({"u": up[src], "b": self.nbr[pos], "contrib": self.val[pos] / (1.0 + aj[src]),
                           "a": ar[src]})  # fmt: skip
        # Per (user, item): summed score, and the anchor that contributed most.
        df = df.sort_values(["u", "b", "contrib"], ascending=[True, True, False], kind="stable")
        g = df.groupby(["u", "b"], sort=False)
        agg = pd.DataFrame({"score": g["contrib"].sum(), "a": g["a"].first()}).reset_index()
        agg = agg[~blocked_pairs(ctx, users, agg["u"].to_numpy(), agg["b"].to_numpy())]
        agg = agg.sort_values(["u", "score", "b"], ascending=[True, False, True], kind="stable")
        agg["rank"] = agg.groupby("u").cumcount() + 1
        agg = agg[agg["rank"] <= k]
        return pd.DataFrame({
            "user_id": np.asarray(users, dtype=object)[agg["u"].to_numpy()],
            "item_id": ctx.catalog.ids[agg["b"].to_numpy()], "score": agg["score"].to_numpy(),
            "source": self.name, "source_rank": agg["rank"].to_numpy(np.int64),
            "anchor": ctx.catalog.ids[agg["a"].to_numpy()],
        })[CANDIDATE_COLUMNS]  # fmt: skip


class ItemItemSource:
    """EASE's linear item-item model (recsys/ease.py): a user's score for item j is the
    sum of B[h, j] over every item h in the history (co-visitation reads the last few
    items, this the whole history), fitted once a night by prepare_retrieve on the
    models' split. Items without a positive score are not candidates."""

    name = "item_item"

    @staticmethod
    def reason(anchor: str) -> str:
        """The reason shown on a slot this source filled (anchor: its title or category)."""
        return "Often liked together with what you liked"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def generate(self, users: list[str], k: int) -> pd.DataFrame:
        ctx, B = self.ctx, self.ctx.item_item
        have = [u for u in users if u in ctx.user_row]
        if B is None or not have:
            return _empty_frame()
        from recsys.ease import binary_matrix

        n = B.shape[0]
        ident = np.arange(n)
        frames = []
        # [b, N] dense scores per batch: at most 2^24 floats (64 MB).
        for batch in _batches(have, max(1, (1 << 24) // max(n, 1)), self.name):
            X = binary_matrix(ctx.seqs, ident, n, np.array([ctx.user_row[u] for u in batch]))  # [b, N]
            S = np.asarray((X @ B).todense(), dtype=np.float64)  # [b, N]
            # Not a candidate without a clearly positive score: sums of B entries that
            # cancel leave float noise around 0, whose sign follows the BLAS threads.
            S[S <= 1e-6] = -np.inf
            S[:, ~ctx.servable] = -np.inf  # the over-fetch below covers exclusions only
            rows = top_m_columns(S, min(n, k + _max_blocked(ctx, batch)))
            frames.append(top_k_rows(ctx, batch, rows, np.take_along_axis(S, rows, 1), k, self.name))
        return _concat(frames)


def top_m_columns(scores: np.ndarray, m: int) -> np.ndarray:
    """[b, N] scores -> [b, m] columns of each row's m best, ties to the lower column
    (top_k_rows' order): the same users' candidates whatever m a batch over-fetches
    (argpartition alone picks among ties at the m-th place arbitrarily)."""
    b, n = scores.shape
    if m >= n:
        return np.broadcast_to(np.arange(n), (b, n))
    kth = -np.partition(-scores, m - 1, axis=1)[:, m - 1 : m]  # [b, 1] each row's m-th best score
    above = scores > kth
    tie = scores == kth
    room = m - above.sum(1, keepdims=True)  # [b, 1] places left for ties
    take = above | (tie & (np.cumsum(tie, axis=1) <= room))  # exactly m per row
    return np.nonzero(take)[1].reshape(b, m)


ITEM_ITEM_FILE = ("retrieve", "item_item.npz")


def prepare_retrieve(cfg: Config, rd: RunDir) -> dict[str, Any]:
    """Once before the shards: the serving index where it trains, and the item_item
    source's model."""
    return {**prepare_index(cfg, rd), **prepare_item_item(cfg, rd)}


def prepare_index(cfg: Config, rd: RunDir) -> dict[str, Any]:
    """Build the serving split's index over servable items and keep it in INDEX_FILE
    when building it trains (IVF), so the shards read it instead of each training it.
    Not where every shard has a worker of its own: they train at once, in parallel, and
    this would only add its seconds before them. At 1M users (20 shards on 2 workers) a
    shard took 36.2/34.3 s training the lists itself and 30.7/30.9 s reading them, for
    8.9-9.5 s once here (docs/benchmarks.md)."""
    from recsys import shards

    path = rd.path(*INDEX_FILE)
    path.unlink(missing_ok=True)
    n = shards.n_shards(rd)
    if n <= shards.workers(cfg, n):
        return {"index": f"built by each shard ({n} shards, a worker each)"}
    t = time.time()
    ctx = load_context(cfg, rd, "full", with_users=False)
    if ctx.item_vecs is None:
        return {"index": "none (no item vectors)"}
    index, rows = ctx.index()
    kept = save_index(index, ctx.scoring_items(rows), path)
    log.info("retrieve: index %s over %d items in %.1fs%s", index.backend, len(rows), time.time() - t,
             ", kept for the shards" if kept else "")  # fmt: skip
    return {
        "index": {"backend": index.backend, "items": len(rows), "saved": kept, "seconds": round(time.time() - t, 1)}
    }


def prepare_item_item(cfg: Config, rd: RunDir) -> dict[str, Any]:
    """Fit the item_item source's EASE on the models' split (every user, so each shard
    reads the same B) and keep its sparse form in retrieve/item_item.npz; nothing when
    the source is off or the catalog too large."""
    from recsys import ease

    path = rd.path(*ITEM_ITEM_FILE)
    path.unlink(missing_ok=True)
    rc = cfg.retrieve
    if rc.source_weights.get("item_item", 0.0) <= 0:
        return {"item_item": "off (retrieve.source_weights)"}
    t = time.time()
    split = cfg.model_split()
    # Counted from the item statistics first: a large shop never reads every history here.
    n_events = pq.read_table(rd.require("features", split, "item_stats"), columns=["n_events"]).column("n_events")
    n = int(np.count_nonzero(np.nan_to_num(n_events.to_numpy(zero_copy_only=False).astype(np.float64))))
    catalog = load_catalog(rd.require("features", "catalog"))
    fitted = None
    if n <= rc.item_item_max_items:
        seqs = load_sequences(rd.require("features", split, "sequences"), catalog.index(), cfg.type_names())
        fitted = ease.fit(seqs, len(catalog.ids), rc.item_item_lambda, rc.item_item_max_items)
    if fitted is None:
        log.info("retrieve: item_item off tonight: %d items with events, retrieve.item_item_max_items=%d",
                 n, rc.item_item_max_items)  # fmt: skip
        return {"item_item": f"off: {n} items with events > retrieve.item_item_max_items"}
    items, B = fitted
    ease.save(path, ease.sparsify(items, B, rc.item_item_neighbors, len(catalog.ids)), catalog.ids)
    log.info("retrieve: item_item (EASE) over %d items in %.1fs", len(items), time.time() - t)
    return {"item_item": {"items": len(items), "neighbors": rc.item_item_neighbors,
                          "seconds": round(time.time() - t, 1)}}  # fmt: skip


class PopularitySource:
    """Global popularity (weighted event count before the cutoff); also the baseline."""

    name = "popularity"

    @staticmethod
    def reason(anchor: str) -> str:
        """The reason shown on a slot this source filled (anchor: its title or category)."""
        return "Popular right now"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        pop = ctx.item_stats["pop_score"].to_numpy(np.float64)
        self.order = np.lexsort((np.arange(len(pop)), -pop))
        self.order = self.order[ctx.servable[self.order]]
        self.scores = pop[self.order]

    def generate(self, users: list[str], k: int) -> pd.DataFrame:
        frames = []
        for batch in _batches(users, 20_000, self.name):
            m = min(len(self.order), k + _max_blocked(self.ctx, batch))
            rows = np.broadcast_to(self.order[:m], (len(batch), m))
            frames.append(top_k_rows(self.ctx, batch, rows, np.broadcast_to(self.scores[:m], rows.shape), k, self.name))
        return _concat(frames)


def top_categories(ctx: Context, users: list[str], n: int = 2) -> pd.DataFrame:
    """Each user's n most frequent categories over their last model.max_seq_len items,
    ties by recency: user position u, category c, in order (vectorised user_top_categories)."""
    rows = [ctx.user_row[u] for u in users if u in ctx.user_row]
    pos = [p for p, u in enumerate(users) if u in ctx.user_row]
    if not rows:
        return pd.DataFrame({"u": [], "c": []})
    L = ctx.cfg.model.max_seq_len
    off = ctx.seqs.offsets
    a = np.maximum(off[np.array(rows)], off[np.array(rows) + 1] - L)
    b = off[np.array(rows) + 1]
    cnt = b - a
    flat = np.arange(cnt.sum()) - np.repeat(np.r_[0, np.cumsum(cnt)[:-1]], cnt) + np.repeat(a, cnt)
    df = pd.DataFrame({"u": np.repeat(pos, cnt), "c": ctx.catalog.category[ctx.seqs.items[flat]],
                       "t": np.arange(len(flat))})  # fmt: skip
    df = df[df["c"] != ""]
    g = df.groupby(["u", "c"], sort=False)["t"].agg(["size", "max"]).reset_index()
    g = g.sort_values(["u", "size", "max"], ascending=[True, False, False])
    return g[g.groupby("u").cumcount() < n][["u", "c"]]


WHOLE_SHOP = "the whole shop"  # how a trending slot without a category names its scope


class TrendingSource:
    """Items with the most recent weighted events (trending_days before the cutoff) in
    the user's top categories; the anchor is the category. A user whose recent items
    have no category (a catalog without categories, where the field is optional) gets
    what trends in the whole shop, anchor ""."""

    name = "trending"

    @staticmethod
    def reason(anchor: str) -> str:
        """The reason shown on a slot this source filled (anchor: its title or category)."""
        return f"Trending in {anchor or WHOLE_SHOP}"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        trend = ctx.item_stats["trend_score"].to_numpy(np.float64)
        self.by_cat: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        cats = ctx.catalog.category
        for c in [*np.unique(cats[cats != ""]), ""]:
            rows = np.flatnonzero(((cats == c) | (c == "")) & (trend > 0) & ctx.servable)
            o = rows[np.lexsort((rows, -trend[rows]))]
            self.by_cat[str(c)] = (o, trend[o])

    def generate(self, users: list[str], k: int) -> pd.DataFrame:
        frames = []
        for batch in _batches(users, 20_000, self.name):
            frames.append(self._batch(batch, k))
        df = _concat(frames)
        # Two categories may both fill k: keep the best k per user.
        df = df.sort_values(["user_id", "score", "item_id"], ascending=[True, False, True], kind="stable")
        df["source_rank"] = df.groupby("user_id").cumcount().astype(np.int64) + 1
        return df[df["source_rank"] <= k].reset_index(drop=True)

    def _batch(self, users: list[str], k: int) -> pd.DataFrame:
        frames = []
        top = top_categories(self.ctx, users)
        # Known users without a category in their recent items: the whole shop ("").
        have = set(top["u"].tolist())
        rest = [p for p, u in enumerate(users) if u in self.ctx.user_row and p not in have]
        top = pd.concat([top, pd.DataFrame({"u": rest, "c": [""] * len(rest)})], ignore_index=True)
        top["u"] = top["u"].astype(np.int64)
        for c, g in top.groupby("c", sort=True):
            if c not in self.by_cat:
                continue
            group = [users[i] for i in g["u"]]
            o, s = self.by_cat[c]
            m = min(len(o), k + _max_blocked(self.ctx, group))
            rows = np.broadcast_to(o[:m], (len(group), m))
            anchors = np.full(rows.shape, c, dtype=object)
            frames.append(top_k_rows(self.ctx, group, rows, np.broadcast_to(s[:m], rows.shape), k, self.name, anchors))
        return _concat(frames)


class _TextKnownSource:
    """Base of the sources over items the model knows by their text (rows [M]), ranked
    by the user vector: the same exact inner-product search as two_tower over a subset
    (faiss selects the top k in C++; a dense [users, M] sort is what cost 1,031 s for
    170k users when every item was new)."""

    name = ""
    rows: np.ndarray  # [M] catalog rows this source may return

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def generate(self, users: list[str], k: int) -> pd.DataFrame:
        ctx = self.ctx
        have = [u for u in users if u in ctx.user_vecs]
        if not len(self.rows) or ctx.item_vecs is None or not have:
            return _empty_frame()
        return search_index(ctx, ctx.subset_index(self.name, self.rows), self.rows, have, k, self.name)


def _new_items(ctx: Context) -> np.ndarray:
    """[N] bool: created within retrieve.new_item_days before the cutoff."""
    start = np.datetime64(ctx.cutoff - dt.timedelta(days=ctx.cfg.retrieve.new_item_days), "us")
    ca = ctx.catalog.created_at
    return (ca >= start) & (ca < np.datetime64(ctx.cutoff, "us"))


class NewArrivalsSource(_TextKnownSource):
    """Items created within new_item_days before the cutoff, ranked by the user vector:
    the cold-start path, since these items' vectors come from their text."""

    name = "new_arrivals"

    @staticmethod
    def reason(anchor: str) -> str:
        """The reason shown on a slot this source filled (anchor: its title or category)."""
        return "New arrival that matches your interests"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.rows = np.flatnonzero(_new_items(ctx) & ctx.servable)


class LongTailSource(_TextKnownSource):
    """Older items with too little history for an id embedding (fewer than
    model.id_embedding_min_count events before the cutoff), ranked by the user vector:
    the model knows them by their text alone, so without this source they almost never
    outrank items with history (synthetic shop: two-tower cold-start Recall@50 0.000;
    ranked by the user vector among these items alone, 0.39 against 0.13 at random)."""

    name = "long_tail"
    # Its candidates serve the discover section only: the ranker never lifted one into
    # a top 50 (synthetic: ranked cold-start Recall@50 0.000 with them), and they were
    # a fifth of the pairs it scores (242 per user instead of 192), its largest cost.
    feeds_ranker = False

    @staticmethod
    def reason(anchor: str) -> str:
        """The reason shown on a slot this source filled (anchor: its title or category)."""
        return "Few people have found this yet, and it matches your interests"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        few = ctx.item_stats["n_events"].to_numpy() < ctx.cfg.model.id_embedding_min_count
        self.rows = np.flatnonzero(few & ~_new_items(ctx) & ctx.servable)


# The source registry: a new candidate source is one class here (name, reason, generate;
# feeds_ranker = False keeps its candidates out of the ranker and the blend) plus its
# weight in retrieve.source_weights; retrieve, rank, rerank and evaluate read it.
SOURCES: dict[str, Any] = {
    "two_tower": TwoTowerSource,
    "covisitation": CovisitationSource,
    "trending": TrendingSource,
    "new_arrivals": NewArrivalsSource,
    "long_tail": LongTailSource,
    "item_item": ItemItemSource,
    "popularity": PopularitySource,
}
# The sources the ranker (and its fallback, the blend) orders, in registry order.
RANKER_SOURCES = [name for name, cls in SOURCES.items() if getattr(cls, "feeds_ranker", True)]
BLEND_COLUMNS = ["user_id", "item_id", "rank", "score", "source", "sources", "anchor"]


def blend(cands: pd.DataFrame, weights: dict[str, float], rrf_k: float, k: int) -> pd.DataFrame:
    """Weighted reciprocal-rank fusion: score = sum_s w_s / (rrf_k + rank_s).

    Returns user_id, item_id, rank (1..), score, source (the largest contributor; ties to
    the alphabetically first), sources (every contributor, comma-separated, sorted),
    anchor (of the largest contributor), sorted by user then rank. Sources of weight 0
    do not contribute. Vectorised over integer keys like recsys.rank.wide_candidates:
    a pandas groupby with a join per pair was 42% of the evaluate stage (20,000 users).
    """
    w = cands["source"].map(weights).fillna(0.0).to_numpy(np.float64) if len(cands) else np.zeros(0)
    c = cands[w > 0]
    if c.empty:
        return pd.DataFrame(columns=BLEND_COLUMNS)
    w = w[w > 0]
    contrib = w / (rrf_k + c["source_rank"].to_numpy(np.float64))  # [R]
    u_code, u_uniq = pd.factorize(c["user_id"], sort=True)  # codes in string order
    i_code, i_uniq = pd.factorize(c["item_id"], sort=True)
    names = sorted(set(c["source"]))
    s_code = pd.Categorical(c["source"], categories=names).codes.astype(np.int64)  # [R]
    key = u_code.astype(np.int64) * len(i_uniq) + i_code
    order = np.lexsort((s_code, -contrib, key))  # per pair: the largest contributor first
    key_o = key[order]
    start = np.flatnonzero(np.r_[True, key_o[1:] != key_o[:-1]])  # [P] first row of each pair
    score = np.add.reduceat(contrib[order], start)  # [P] summed largest first
    mask = np.bitwise_or.reduceat(np.left_shift(1, s_code[order]), start)  # [P] contributors as bits
    first = order[start]  # [P] the largest contributor's row
    # User, then score down, then item. Scores are ordered at 12 decimals (they are
    # sums of w / (rrf_k + rank) ~ 1e-3..1): sums equal in exact arithmetic, summed in
    # another order, tie and go to the lower item id, not to a last-bit difference.
    top = np.lexsort((i_code[first], -np.round(score, 12), u_code[first]))
    rank = run_positions(u_code[first][top])  # [P]
    sel = top[rank <= k]  # pairs kept, in output order
    rows = first[sel]
    return pd.DataFrame({
        "user_id": u_uniq[u_code[rows]], "item_id": i_uniq[i_code[rows]], "rank": rank[rank <= k],
        "score": score[sel], "source": c["source"].to_numpy()[rows], "sources": source_labels(mask[sel], names),
        "anchor": c["anchor"].fillna("").to_numpy()[rows] if "anchor" in c else "",
    })  # fmt: skip


def run_positions(codes: np.ndarray) -> np.ndarray:
    """[n] 1-based position of each element in its run of equal codes (codes sorted)."""
    start = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])[: len(codes)]
    return np.arange(len(codes)) - np.repeat(start, np.diff(np.r_[start, len(codes)])) + 1


def source_labels(mask: np.ndarray, names: list[str]) -> np.ndarray:
    """[n] comma-separated names of the bits set in each mask (bit j = names[j])."""
    if len(names) <= 12:  # a label for every possible mask, looked up (no sort of the n masks)
        table = np.array([",".join(n for j, n in enumerate(names) if m >> j & 1) for m in range(1 << len(names))],
                         dtype=object)  # fmt: skip
        return table[np.asarray(mask, dtype=np.int64)]
    masks, inv = np.unique(mask, return_inverse=True)
    labels = np.array([",".join(n for j, n in enumerate(names) if m >> j & 1) for m in masks.tolist()], dtype=object)
    return labels[inv.reshape(-1)]


def generate_all(ctx: Context, users: list[str], k: int | None = None) -> pd.DataFrame:
    """Every configured source's candidates for users (long format)."""
    rc = ctx.cfg.retrieve
    per_k = rc.per_source_k
    frames = []
    for name, cls in SOURCES.items():
        if rc.source_weights.get(name, 0.0) <= 0 and name != "two_tower":
            continue
        t = time.time()
        df = cls(ctx).generate(users, k or (rc.top_k if name == "two_tower" else per_k))
        frames.append(df)
        log.info("retrieve: %-12s %8d candidates for %d users in %.1fs", name, len(df), df["user_id"].nunique(),
                 time.time() - t)  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def run_retrieve(cfg: Config, rd: RunDir, shard: int, n_shards: int) -> dict[str, Any]:
    """Serving candidates of every source for one user shard: its part of
    candidates/by_source.parquet (the rank stage orders them into ranked.parquet)."""
    t0 = time.time()
    ctx = load_context(cfg, rd, "full", shard=(shard, n_shards))
    ctx.index_file = rd.path(*INDEX_FILE)
    users = sorted(ctx.user_row)
    out = PartWriter(part_path(rd, n_shards, shard, "candidates", "by_source.parquet"))
    by_source: dict[str, int] = defaultdict(int)
    for batch in batches(users, cfg.scale.batch_users):
        cands = generate_all(ctx, batch)
        out.write(cands)
        for k, v in cands.groupby("source").size().items():
            by_source[str(k)] += int(v)
    rows = out.close(_empty_frame())
    info = {
        "users": len(users),
        "candidates": rows,
        "by_source": dict(by_source),
        "index_backend": ctx.index()[0].backend if ctx.item_vecs is not None else "none",
    }
    log.info("retrieve: shard %d: %d users, %d candidates in %.1fs", shard, len(users), rows, time.time() - t0)
    return info


def finish_retrieve(cfg: Config, rd: RunDir, prepared: dict[str, Any], infos: list[dict[str, Any]]) -> dict[str, Any]:
    by_source: dict[str, int] = defaultdict(int)
    for i in infos:
        for k, v in i["by_source"].items():
            by_source[k] += v
    users = sum(i["users"] for i in infos)
    busy = sum(i["seconds"] for i in infos)
    return {
        "users": users,
        "candidates": sum(i["candidates"] for i in infos),
        "by_source": dict(by_source),
        "index_backend": infos[0]["index_backend"],
        "users_per_s_per_worker": round(users / max(busy, 1e-9), 1),
        **prepared,
    }
