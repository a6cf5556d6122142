"""Candidate generation: a vector index and several candidate sources behind one interface.

Every source implements `CandidateSource.generate(users) -> CandidateFrame` with columns
user_id, item_id, score, source, source_rank, anchor (the item or category that explains
the candidate, or ""). Every source respects the same contract: no excluded item, no
unavailable item, at most k rows per user, ranks 1..n by descending score. The contract
tests in tests/test_retrieve.py run against every source.

Sources: two_tower (FAISS inner product over the item tower), covisitation (what
followed the user's recent items), trending (in the user's categories), new_arrivals
(recent items ranked by the user vector: cold start), popularity (also the baseline).
`blend` fuses them with weighted reciprocal-rank fusion into one ranked list per user.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from recsys.config import Config, RetrieveConfig
from recsys.device import faiss_available, faiss_num_gpus
from recsys.features import Catalog, Sequences, load_catalog, load_sequences, split_cutoff
from recsys.progress import Progress
from recsys.rundir import RunDir

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
    _index: VectorIndex | None = None
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
            self._index = build_index(self.scoring_items(rows), self.cfg.retrieve)
            self._index_rows = rows
        return self._index, self._index_rows

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


def load_context(cfg: Config, rd: RunDir, split: str, with_vectors: bool = True) -> Context:
    catalog = load_catalog(rd.require("features", "catalog"))
    idx = catalog.index()
    seqs = load_sequences(rd.require("features", split, "sequences"), idx, cfg.type_names())
    stats = pq.read_table(rd.require("features", split, "item_stats")).to_pandas()
    stats.index = idx.get_indexer(stats["item_id"])
    stats = stats[stats.index >= 0].reindex(range(len(catalog.ids)))
    stats[["n_events", "pop_score", "trend_score"]] = stats[["n_events", "pop_score", "trend_score"]].fillna(0)
    cov = pq.read_table(rd.require("features", split, "covisitation")).to_pandas()
    cov["a"] = idx.get_indexer(cov["item_id"])
    cov["b"] = idx.get_indexer(cov["neighbor_id"])
    cov = cov[(cov.a >= 0) & (cov.b >= 0)].sort_values(["a", "rank"])
    covis = {
        int(a): (g["b"].to_numpy(np.int64), g["score"].to_numpy(np.float64)) for a, g in cov.groupby("a", sort=False)
    }
    exc = pq.read_table(rd.require("features", split, "exclusions")).to_pandas()
    exc["row"] = idx.get_indexer(exc["item_id"])
    excluded: dict[str, set[int]] = defaultdict(set)
    for u, r in zip(exc["user_id"], exc["row"], strict=True):
        if r >= 0:
            excluded[u].add(int(r))
    cutoff = split_cutoff(rd.require("features", split))
    ctx = Context(
        cfg=cfg,
        cutoff=cutoff,
        catalog=catalog,
        seqs=seqs,
        user_row={u: i for i, u in enumerate(seqs.user_ids)},
        item_stats=stats,
        covis=covis,
        excluded=dict(excluded),
    )
    if with_vectors:
        emb = rd.require("embeddings")
        ctx.item_vecs = np.load(emb / "items.npy")
        if (emb / "item_bias.npy").is_file():
            ctx.item_bias = np.load(emb / "item_bias.npy")
        if (emb / "scoring.json").is_file():
            ctx.temperature = float(json.loads((emb / "scoring.json").read_text())["temperature"])
        uv = np.load(emb / f"users_{split}.npy")
        uids = pq.read_table(emb / f"users_{split}.parquet").column("user_id").to_pylist()
        ctx.user_vecs = {u: uv[i] for i, u in enumerate(uids)}
    return ctx


# ---- sources -------------------------------------------------------------------------
class CandidateSource(Protocol):
    name: str

    @staticmethod
    def reason(anchor: str) -> str: ...

    def generate(self, users: list[str], k: int) -> pd.DataFrame:
        """Candidates for users: CANDIDATE_COLUMNS, <= k rows per user."""
        ...


def _frame(rows: list[tuple[str, int, float, str]], ctx: Context, source: str) -> pd.DataFrame:
    """(user_id, catalog row, score, anchor) rows -> CandidateFrame with ranks."""
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(
            CANDIDATE_COLUMNS, [object, object, float, object, np.int64, object], strict=True)})  # fmt: skip
    df = pd.DataFrame(rows, columns=["user_id", "row", "score", "anchor"])
    df["item_id"] = ctx.catalog.ids[df["row"].to_numpy()]
    df["source"] = source
    df = df.sort_values(["user_id", "score", "item_id"], ascending=[True, False, True], kind="stable")
    df["source_rank"] = df.groupby("user_id").cumcount().astype(np.int64) + 1
    return df[CANDIDATE_COLUMNS].reset_index(drop=True)


def _take(user: str, ranked_rows: np.ndarray, scores: np.ndarray, ctx: Context, k: int,
          anchor: str | list[str] = "") -> list[tuple[str, int, float, str]]:  # fmt: skip
    """First k rows that are servable and not blocked for the user (anchor: one for
    all rows, or one per row)."""
    blocked = ctx.blocked(user)
    out = []
    for j, (r, s) in enumerate(zip(ranked_rows, scores, strict=True)):
        r = int(r)
        if r < 0 or r in blocked or not ctx.servable[r]:
            continue
        out.append((user, r, float(s), anchor if isinstance(anchor, str) else anchor[j]))
        if len(out) >= k:
            break
    return out


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
            return _frame([], ctx, self.name)
        index, index_rows = ctx.index()
        rows: list[tuple[str, int, float, str]] = []
        bs = ctx.cfg.retrieve.query_batch_size
        bar = Progress(len(have), f"retrieve: {self.name}", "users")
        for i in range(0, len(have), bs):
            batch = have[i : i + bs]
            bar.update(len(batch))
            q = ctx.scoring_users(batch)  # [b, d+1]
            # Over-fetch by the batch's largest exclusion list so k survive filtering.
            extra = min(max((len(ctx.blocked(u)) for u in batch), default=0), 2000)
            scores, found = index.search(q, k + extra)  # [b, k+extra]
            for j, u in enumerate(batch):
                ok = found[j] >= 0
                rows.extend(_take(u, index_rows[found[j][ok]], scores[j][ok], ctx, k))
        bar.close()
        return _frame(rows, ctx, self.name)


class CovisitationSource:
    """What followed the user's most recent items (anchors), decayed by anchor recency."""

    name = "covisitation"

    @staticmethod
    def reason(anchor: str) -> str:
        """The reason shown on a slot this source filled (anchor: its title or category)."""
        return f"Often viewed after {anchor}"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def generate(self, users: list[str], k: int) -> pd.DataFrame:
        ctx = self.ctx
        n_anchors = ctx.cfg.retrieve.covis_anchors
        rows: list[tuple[str, int, float, str]] = []
        for u in users:
            h = ctx.history(u)
            if not len(h):
                continue
            score: dict[int, float] = defaultdict(float)
            best_anchor: dict[int, tuple[float, int]] = {}
            anchors = list(dict.fromkeys(h[::-1].tolist()))[:n_anchors]  # most recent first
            for j, a in enumerate(anchors):
                nb = ctx.covis.get(a)
                if nb is None:
                    continue
                decay = 1.0 / (1.0 + j)
                for b, s in zip(nb[0], nb[1], strict=True):
                    contrib = float(s) * decay
                    score[int(b)] += contrib
                    if contrib > best_anchor.get(int(b), (-1.0, 0))[0]:
                        best_anchor[int(b)] = (contrib, a)
            if not score:
                continue
            items = np.array(list(score.keys()), dtype=np.int64)
            vals = np.array(list(score.values()))
            order = np.lexsort((items, -vals))
            anchor_ids = [str(ctx.catalog.ids[best_anchor[int(r)][1]]) for r in items[order]]
            rows.extend(_take(u, items[order], vals[order], ctx, k, anchor_ids))
        return _frame(rows, ctx, self.name)


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
        self.scores = pop[self.order]

    def generate(self, users: list[str], k: int) -> pd.DataFrame:
        rows: list[tuple[str, int, float, str]] = []
        for u in users:
            rows.extend(_take(u, self.order, self.scores, self.ctx, k))
        return _frame(rows, self.ctx, self.name)


class TrendingSource:
    """Items with the most recent weighted events (trending_days before the cutoff) in
    the user's top categories; the anchor is the category."""

    name = "trending"

    @staticmethod
    def reason(anchor: str) -> str:
        """The reason shown on a slot this source filled (anchor: its title or category)."""
        return f"Trending in {anchor}"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        trend = ctx.item_stats["trend_score"].to_numpy(np.float64)
        self.by_cat: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        cats = ctx.catalog.category
        for c in np.unique(cats):
            rows = np.flatnonzero((cats == c) & (trend > 0))
            o = rows[np.lexsort((rows, -trend[rows]))]
            self.by_cat[str(c)] = (o, trend[o])

    def generate(self, users: list[str], k: int) -> pd.DataFrame:
        rows: list[tuple[str, int, float, str]] = []
        for u in users:
            for c in self.ctx.user_top_categories(u, 2):
                if c in self.by_cat:
                    o, s = self.by_cat[c]
                    rows.extend(_take(u, o, s, self.ctx, k, c))
            # keep at most k per user, best first (two categories may both fill k)
        df = _frame(rows, self.ctx, self.name)
        return df[df["source_rank"] <= k].reset_index(drop=True)


class NewArrivalsSource:
    """Items created within new_item_days before the cutoff, ranked by the user vector:
    the cold-start path, since these items' vectors come from their text."""

    name = "new_arrivals"

    @staticmethod
    def reason(anchor: str) -> str:
        """The reason shown on a slot this source filled (anchor: its title or category)."""
        return "New arrival that matches your interests"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        start = np.datetime64(ctx.cutoff - dt.timedelta(days=ctx.cfg.retrieve.new_item_days), "us")
        end = np.datetime64(ctx.cutoff, "us")
        ca = ctx.catalog.created_at
        self.rows = np.flatnonzero((ca >= start) & (ca < end) & ctx.servable)

    def generate(self, users: list[str], k: int) -> pd.DataFrame:
        ctx = self.ctx
        rows: list[tuple[str, int, float, str]] = []
        if not len(self.rows) or ctx.item_vecs is None:
            return _frame(rows, ctx, self.name)
        vecs = ctx.scoring_items(self.rows)  # [M, d+1]
        have = [u for u in users if u in ctx.user_vecs]
        for i in range(0, len(have), 4096):
            batch = have[i : i + 4096]
            s = ctx.scoring_users(batch) @ vecs.T  # [b, M]
            for j, u in enumerate(batch):
                o = np.argsort(-s[j], kind="stable")
                rows.extend(_take(u, self.rows[o], s[j][o], ctx, k))
        return _frame(rows, ctx, self.name)


# The source registry: a new candidate source is one class here (name, reason, generate)
# plus its weight in retrieve.source_weights; retrieve, rank, rerank and evaluate read it.
SOURCES: dict[str, Any] = {
    "two_tower": TwoTowerSource,
    "covisitation": CovisitationSource,
    "trending": TrendingSource,
    "new_arrivals": NewArrivalsSource,
    "popularity": PopularitySource,
}


def blend(cands: pd.DataFrame, weights: dict[str, float], rrf_k: float, k: int) -> pd.DataFrame:
    """Weighted reciprocal-rank fusion: score = sum_s w_s / (rrf_k + rank_s).

    Returns user_id, item_id, rank (1..), score, source (the largest contributor),
    sources (every contributor, comma-separated), anchor (of the largest contributor).
    """
    if cands.empty:
        return pd.DataFrame(columns=["user_id", "item_id", "rank", "score", "source", "sources", "anchor"])
    c = cands.copy()
    c["w"] = c["source"].map(weights).fillna(0.0)
    c = c[c["w"] > 0]
    c["contrib"] = c["w"] / (rrf_k + c["source_rank"])
    c = c.sort_values(["user_id", "item_id", "contrib", "source"], ascending=[True, True, False, True])
    g = c.groupby(["user_id", "item_id"], sort=False)
    out = g.agg(score=("contrib", "sum"), source=("source", "first"), anchor=("anchor", "first"))
    out["sources"] = g["source"].agg(lambda s: ",".join(sorted(s)))
    out = out.reset_index().sort_values(["user_id", "score", "item_id"], ascending=[True, False, True])
    out["rank"] = out.groupby("user_id").cumcount() + 1
    out = out[out["rank"] <= k]
    return out[["user_id", "item_id", "rank", "score", "source", "sources", "anchor"]].reset_index(drop=True)


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


def run_retrieve(cfg: Config, rd: RunDir) -> dict[str, Any]:
    """Serving candidates of every source for every user with history:
    candidates/by_source.parquet (the rank stage orders them into ranked.parquet)."""
    t0 = time.time()
    ctx = load_context(cfg, rd, "full")
    users = sorted(ctx.user_row)
    cands = generate_all(ctx, users)
    out = rd.path("candidates")
    out.mkdir(parents=True, exist_ok=True)
    cands.to_parquet(out / "by_source.parquet", index=False)
    index, _ = ctx.index()
    info = {
        "users": len(users),
        "candidates": len(cands),
        "by_source": cands.groupby("source").size().to_dict(),
        "index_backend": index.backend,
        "users_per_s": round(len(users) / max(time.time() - t0, 1e-9), 1),
        "seconds": round(time.time() - t0, 1),
    }
    log.info("retrieve: %s", info)
    return info
