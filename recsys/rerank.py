"""Re-rank candidates into a homepage: diversified, capped, sectioned, explained.

For a batch of users, in the configured section order, each section draws from its own
candidate pool and skips items already placed in an earlier section (no duplicates on a
page); MMR picks every user's slots of a section in one array operation:
- top_picks:          the ranker's candidates, diversified with MMR (or greedy DPP)
- because_you_viewed: what followed the most recent anchor item (co-visitation)
- trending:           trending in the user's top category
- new_for_you:        new arrivals ranked by the user vector (cold-start items)
- discover:           the long-tail exposure quota: ranked candidates beyond the
                      popularity quantile, interleaved with the long_tail source
                      (items with too little history, matched by their text)
Every section applies the category cap while its pool has other categories left (a
section is never left short for it). Every slot carries its source, score and reason.
Users without enough history are served a segment fallback homepage built here too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from recsys import jsonio
from recsys.config import Config, SectionSpec
from recsys.progress import Progress
from recsys.retrieve import SOURCES, WHOLE_SHOP, Context, load_context
from recsys.rundir import RunDir
from recsys.shards import PartReader, PartWriter, batches, existing_part, part_path, write_part

log = logging.getLogger(__name__)


# ---- diversification (plain functions over arrays) ------------------------------------
def _normalise(x: np.ndarray) -> np.ndarray:
    if len(x) == 0:
        return x
    lo, hi = float(x.min()), float(x.max())
    return np.ones_like(x) if hi - lo < 1e-12 else (x - lo) / (hi - lo)


def category_codes(cats: np.ndarray) -> np.ndarray:
    """[n] category labels -> [n] int codes for the cap; "" and None (no category) -> -1,
    which the cap never counts: a catalog without categories has nothing to diversify by.
    Integer labels are codes already (-1 = none) and pass through."""
    arr = np.asarray(cats)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    s = pd.Series(arr.astype(object))
    codes = pd.factorize(s.where(s != "", None))[0]  # missing -> -1
    return codes.astype(np.int64)


def soft_cap_ok(alive: np.ndarray, under_cap: np.ndarray) -> np.ndarray:
    """[B, n] which candidates a step may pick: those under the category cap, or, in a
    row with none of those left, every candidate left. The cap spreads a section over
    categories where the pool has several; it never leaves slots empty (a shop whose
    pool is one category would get cap-many top picks)."""
    ok = alive & under_cap
    return np.where(ok.any(axis=-1, keepdims=True), ok, alive)


def mmr_select(
    rel: np.ndarray, vecs: np.ndarray, k: int, lam: float, cats: np.ndarray | None = None, cap: int | None = None
) -> list[int]:
    """Maximal marginal relevance for one list (see mmr_select_batch): rel [n] (min-max
    normalised inside), vecs [n, d] unit vectors, cats [n] labels for the cap (at most
    `cap` picks per label while other labels are left; "" or None = no label, never
    capped). Returns picked positions in order."""
    codes = None if cats is None else category_codes(cats).reshape(1, -1)
    out = mmr_select_batch(_normalise(np.asarray(rel, dtype=np.float64))[None], vecs[None], k, lam, codes, cap)
    return [int(j) for j in out[0] if j >= 0]


def mmr_select_batch(
    rel: np.ndarray, vecs: np.ndarray, k: int, lam: float, cats: np.ndarray | None = None, cap: int | None = None
) -> np.ndarray:
    """MMR for B lists at once: each row picks argmax lam*rel_i - (1-lam)*max_{j in S}
    sim(i,j) k times, skipping labels already picked `cap` times while the row has a
    candidate of another label left (soft_cap_ok).

    rel [B, n] relevance (NaN = padding), vecs [B, n, d] unit vectors, cats [B, n] int
    labels (-1 = none, never capped). Returns [B, k] positions (-1 = the row ran out of
    candidates). Every step is one vectorised operation over the batch, and each row's
    result depends on that row alone (the per-user loop this replaced re-ranked ~1,400
    users/s)."""
    B, n = rel.shape
    rows = np.arange(B)
    alive = np.isfinite(rel)
    r = np.where(alive, rel, 0.0)
    sim_max = np.zeros((B, n))
    same = np.zeros((B, n), dtype=np.int64)  # picks so far with each candidate's label
    out = np.full((B, k), -1, dtype=np.int64)
    for step in range(k):
        ok = alive if cats is None or cap is None else soft_cap_ok(alive, (same < cap) | (cats < 0))
        j = np.where(ok, lam * r - (1.0 - lam) * sim_max, -np.inf).argmax(1)  # [B]
        hit = ok[rows, j]
        if not hit.any():
            break
        out[hit, step] = j[hit]
        alive[rows[hit], j[hit]] = False
        if cats is not None:
            same += (cats == cats[rows, j][:, None]) & hit[:, None]
        sim = np.einsum("bnd,bd->bn", vecs, vecs[rows, j])  # [B, n]
        sim_max = np.where(hit[:, None], np.maximum(sim_max, sim), sim_max)
    return out


def dpp_select(
    rel: np.ndarray, vecs: np.ndarray, k: int, theta: float, cats: np.ndarray | None = None, cap: int | None = None
) -> list[int]:
    """Fast greedy MAP for a DPP (Chen, Zhang, Zhou 2018) with kernel
    L = diag(q) S diag(q), q_i = exp(alpha * rel_i), S = vecs vecs^T (PSD, unit diag),
    alpha = theta / (2 (1 - theta)) so theta plays the role of MMR's lambda.
    Incremental Cholesky: O(n k^2). Returns picked positions in order."""
    n = len(rel)
    if n == 0 or k <= 0:
        return []
    theta = min(max(theta, 0.0), 0.99)
    alpha = theta / (2.0 * (1.0 - theta))
    q = np.exp(alpha * _normalise(np.asarray(rel, dtype=np.float64)))
    S = vecs.astype(np.float64) @ vecs.astype(np.float64).T
    L = q[:, None] * S * q[None, :]
    cis = np.zeros((k, n))
    d2 = np.diag(L).copy()
    alive = np.ones(n, dtype=bool)
    picked: list[int] = []
    codes = category_codes(cats) if cats is not None and cap is not None else None
    counts = np.zeros(n + 1, dtype=np.int64)  # picks per label code; the last entry is label -1's, never read
    while len(picked) < k:
        ok = alive if codes is None else soft_cap_ok(alive, (codes < 0) | (counts[codes] < cap))
        cand = np.where(ok, d2, -np.inf)
        j = int(np.argmax(cand))
        if not np.isfinite(cand[j]) or cand[j] <= 1e-10:
            break
        alive[j] = False
        m = len(picked)
        ej = (L[j] - cis[:m].T @ cis[:m, j]) / np.sqrt(d2[j])
        cis[m] = ej
        d2 = d2 - ej**2
        picked.append(j)
        if codes is not None:
            counts[codes[j]] += 1
    return picked


# ---- sections -------------------------------------------------------------------------
def page_score(x: float) -> float:
    """A slot's score as the page stores it: 4 significant digits. The score orders
    nothing on the site (slots are in reading order); in jsonb each is a numeric, and
    6 decimals were 26% of a compressed page (bench/page_bytes.py in docs/benchmarks.md)."""
    return float(f"{x:.4g}")


def leaf(category: str) -> str:
    return category.split(">")[-1].strip() if category else ""


class SectionBuilder:
    def __init__(self, cfg: Config, ctx: Context) -> None:
        self.cfg = cfg
        self.ctx = ctx
        rc = cfg.rerank
        self.k_cap = rc.category_cap
        pop = ctx.item_stats["pop_score"].to_numpy(np.float64)
        # Long tail: popularity rank beyond the quantile among items (zero-pop included).
        rank = np.empty(len(pop), dtype=np.int64)
        rank[np.lexsort((np.arange(len(pop)), -pop))] = np.arange(len(pop))
        self.long_tail = rank >= int(len(pop) * rc.long_tail_quantile)
        self.head_share = 1.0 - rank / max(len(pop) - 1, 1)  # [N] 1 = most popular, 0 = least
        self.row_of = {x: i for i, x in enumerate(ctx.catalog.ids)}
        self.cat_code = category_codes(ctx.catalog.category)  # [N] int, -1 = no category
        self.vecs = ctx.item_vecs if ctx.item_vecs is not None else np.eye(len(pop), 1, dtype=np.float32)

    def title(self, item_id: str) -> str:
        r = self.row_of.get(item_id)
        return str(self.ctx.catalog.title[r]) if r is not None else item_id

    def _relevance(self, d: Draft) -> np.ndarray:
        """[n] relevance in [0, 1] minus the popularity penalty: spreads exposure over
        the catalog (coverage) at a small cost in accuracy; see rerank.popularity_penalty."""
        score = d.pool.score if d.rel is None else d.rel
        pen = self.cfg.rerank.popularity_penalty * self.head_share[d.pool.rows]
        return _normalise(np.asarray(score, dtype=np.float64)) - pen

    def _choose(self, drafts: list[Draft], k: int) -> list[list[int]]:
        """Each draft's positions to show, in order: MMR over the whole batch of users
        at once (in chunks that bound the [users, n, d] vectors), greedy DPP one user at
        a time, or the first k where a section keeps its pool's order."""
        rc = self.cfg.rerank
        out: list[list[int]] = [list(range(min(k, len(d.pool)))) for d in drafts]
        todo = [i for i, d in enumerate(drafts) if d.diversify]
        if rc.method == "dpp":
            for i in todo:
                d = drafts[i]
                cats = self.cat_code[d.pool.rows]
                out[i] = dpp_select(self._relevance(d), self.vecs[d.pool.rows], k, rc.mmr_lambda, cats, self.k_cap)
            return out
        for c in range(0, len(todo), MMR_CHUNK):
            part = [drafts[i] for i in todo[c : c + MMR_CHUNK]]
            n = max(len(d.pool) for d in part)
            rel = np.full((len(part), n), np.nan)  # [B, n] NaN = padding
            rows = np.zeros((len(part), n), dtype=np.int64)  # [B, n] catalog rows
            for b, d in enumerate(part):
                rel[b, : len(d.pool)] = _normalise(self._relevance(d))
                rows[b, : len(d.pool)] = d.pool.rows
            cats = np.where(np.isfinite(rel), self.cat_code[rows], -1)
            picks = mmr_select_batch(rel, self.vecs[rows], k, rc.mmr_lambda, cats, self.k_cap)
            for i, p in zip(todo[c : c + MMR_CHUNK], picks, strict=True):
                out[i] = [int(j) for j in p if j >= 0]
        return out

    def _slots(self, pool: Pool, picks: list[int], reason: Callable[[int], str]) -> list[dict[str, Any]]:
        # Whole columns to Python values at once (tolist), not one numpy scalar at a time.
        items, sources, anchors = (pool.item[picks].tolist(), pool.source[picks].tolist(),
                                   pool.anchor[picks].tolist())  # fmt: skip
        scores = [page_score(x) for x in pool.score[picks].tolist()]
        out = []
        for j, p in enumerate(picks):
            slot = {"item_id": str(items[j]), "score": scores[j], "source": str(sources[j]),
                    "reason": reason(p)}  # fmt: skip
            if anchors[j]:
                slot["anchor"] = str(anchors[j])
            out.append(slot)
        return out

    def build_pages(self, users: list[str], ranked: dict[str, Pool],
                    by_source: dict[str, dict[str, Pool]]) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
        """user -> sections for a batch of users: ranked[user] their ranked candidates,
        by_source[user][source] their per-source ones. Sections are filled in the
        configured order, each for the whole batch at once; an item appears once per page."""
        used: dict[str, set[int]] = {u: set() for u in users}  # catalog rows already on each page
        pages: dict[str, list[dict[str, Any]]] = {u: [] for u in users}
        for spec in self.cfg.rerank.sections:
            drafts: dict[str, Draft] = {}
            for u in users:
                d = SECTIONS[spec.key](self, spec, u, ranked.get(u, EMPTY), by_source.get(u, {}), used[u])
                if d is not None and len(d.pool):
                    drafts[u] = d
            for (u, d), picks in zip(drafts.items(), self._choose(list(drafts.values()), spec.size), strict=True):
                if picks:
                    used[u].update(int(d.pool.rows[p]) for p in picks)
                    pages[u].append({"key": spec.key, "title": d.title, "items": self._slots(d.pool, picks, d.reason)})
        return {u: p for u, p in pages.items() if p}

    # ---- one method per section (registered in SECTIONS below) -------------------------
    # Each returns one user's Draft (pool, title, reason per slot), or None for no
    # section; `used` holds the rows already on the page. _choose picks the slots.
    def top_picks(self, spec: SectionSpec, user: str, ranked: Pool, by_source: dict[str, Pool],
                  used: set[int]) -> Draft | None:  # fmt: skip
        """The ranked candidates, diversified (MMR or DPP) under the category cap."""
        pool = ranked.without(used)
        return Draft(pool, spec.title, lambda p: self._reason(pool, p))

    def because_you_viewed(self, spec: SectionSpec, user: str, ranked: Pool, by_source: dict[str, Pool],
                           used: set[int]) -> Draft | None:  # fmt: skip
        """What followed the most recent history item that still has unused follow-ups."""
        pool = by_source.get("covisitation", EMPTY).without(used)
        if not len(pool):
            return None
        anchors = set(pool.anchor.tolist())
        hist = [str(self.ctx.catalog.ids[i]) for i in self.ctx.history(user)[::-1]]
        anchor = next((x for x in hist if x in anchors), pool.anchor[0])
        name = self.title(anchor)
        return Draft(pool.where(pool.anchor == anchor), spec.title.format(anchor=name),
                     lambda p: f"Because you viewed {name}")  # fmt: skip

    def trending(self, spec: SectionSpec, user: str, ranked: Pool, by_source: dict[str, Pool],
                 used: set[int]) -> Draft | None:  # fmt: skip
        """Trending in the user's top category (one category: no cap), in trend order."""
        pool = by_source.get("trending", EMPTY).without(used)
        if not len(pool):
            return None
        cat_name = leaf(str(pool.anchor[0])) or WHOLE_SHOP
        return Draft(pool.where(pool.anchor == pool.anchor[0]), spec.title.format(category=cat_name),
                     lambda p: f"Trending in {cat_name}", diversify=False)  # fmt: skip

    def new_for_you(self, spec: SectionSpec, user: str, ranked: Pool, by_source: dict[str, Pool],
                    used: set[int]) -> Draft | None:  # fmt: skip
        """New arrivals ranked by the user vector (cold-start items, known by their text)."""
        reason = SOURCES["new_arrivals"].reason("")
        return Draft(by_source.get("new_arrivals", EMPTY).without(used), spec.title, lambda p: reason)

    def discover(self, spec: SectionSpec, user: str, ranked: Pool, by_source: dict[str, Pool],
                 used: set[int]) -> Draft | None:  # fmt: skip
        """The long-tail quota from both paths to the tail, interleaved and diversified:
        the ranked candidates beyond the popularity quantile (behaviour says they fit) and
        the long_tail source (items with too little history, matched by their text)."""
        tail = ranked.without(used)
        tail = tail.where(self.long_tail[tail.rows])
        text = by_source.get("long_tail", EMPTY).without(used).without(set(tail.rows.tolist()))
        # Interleave the two lists by position (each is best first): [n] in (0, 1].
        rel = np.r_[1.0 / (1.0 + np.arange(len(tail))), 1.0 / (1.0 + np.arange(len(text)))]
        by_text = np.r_[np.zeros(len(tail), dtype=bool), np.ones(len(text), dtype=bool)]
        reasons = ("Off the beaten track: fewer people have found this yet", SOURCES["long_tail"].reason(""))
        return Draft(Pool.concat(tail, text), spec.title, lambda p: reasons[int(by_text[p])], rel=rel)

    def _reason(self, pool: Pool, p: int) -> str:
        src = str(pool.source[p])
        anchor = str(pool.anchor[p] or "")
        if src == "covisitation":
            anchor = self.title(anchor)
        elif src == "trending":
            anchor = leaf(anchor)
        cls = SOURCES.get(src)
        return cls.reason(anchor) if cls is not None else "Recommended for you"


# The section registry: a new section is one SectionBuilder method plus its entry here
# (and, to show it, an entry in rerank.sections).
SECTIONS: dict[str, Callable[..., Draft | None]] = {
    "top_picks": SectionBuilder.top_picks,
    "because_you_viewed": SectionBuilder.because_you_viewed,
    "trending": SectionBuilder.trending,
    "new_for_you": SectionBuilder.new_for_you,
    "discover": SectionBuilder.discover,
}


@dataclass
class Pool:
    """One user's candidates from one list, as parallel arrays (best first)."""

    item: np.ndarray  # [n] item ids
    rows: np.ndarray  # [n] catalog rows
    score: np.ndarray  # [n] float
    source: np.ndarray  # [n] str
    anchor: np.ndarray  # [n] str ('' = none)

    @staticmethod
    def empty() -> Pool:
        e = np.zeros(0, dtype=object)
        return Pool(e, np.zeros(0, dtype=np.int64), np.zeros(0), e, e)

    def __len__(self) -> int:
        return len(self.item)

    @staticmethod
    def concat(a: Pool, b: Pool) -> Pool:
        """a's candidates, then b's."""
        return Pool(
            *(np.concatenate([getattr(a, f), getattr(b, f)]) for f in ("item", "rows", "score", "source", "anchor"))
        )

    def where(self, mask: np.ndarray) -> Pool:
        return Pool(self.item[mask], self.rows[mask], self.score[mask], self.source[mask], self.anchor[mask])

    def without(self, used: set[int]) -> Pool:
        """The pool less the catalog rows in used. A binary search in the sorted rows,
        not np.isin: called ~5 times per page on ~200 rows, isin's own sorting made it
        46 us a call against 6 (a quarter of build_slates' time)."""
        if not used or not len(self):
            return self
        keys = np.sort(np.fromiter(used, dtype=np.int64, count=len(used)))
        pos = np.minimum(np.searchsorted(keys, self.rows), len(keys) - 1)
        return self.where(keys[pos] != self.rows)


EMPTY = Pool.empty()
# Users whose top-picks pools are diversified in one array operation: bounds the
# [users, n, d] vector block (512 x 100 x 128 float32 = 26 MB).
MMR_CHUNK = 512


@dataclass
class Draft:
    """One user's section before its slots are chosen."""

    pool: Pool  # the candidates, best first
    title: str
    reason: Callable[[int], str]  # pool position -> the slot's reason
    rel: np.ndarray | None = None  # [n] relevance instead of pool.score (merged lists)
    diversify: bool = True  # False: the pool's first `size` items, in order


def split_pools(df: pd.DataFrame, item_index: pd.Index, order_col: str, by_source: bool) -> dict[Any, Any]:
    """A long candidate frame -> {user: Pool} (or {user: {source: Pool}}), best first.
    One sort and one vectorised split instead of a pandas group per user."""
    if df.empty:
        return {}
    finite = np.isfinite(df["score"].to_numpy(np.float64))
    if not finite.all():  # a page never carries NaN or Infinity (jsonb refuses them)
        log.warning("rerank: %d candidates with a non-finite score dropped", int((~finite).sum()))
        df = df[finite]
    # Grouping needs integer codes only (hash-based, first appearance): sorting the id
    # strings themselves was a fifth of the rerank stage. lexsort is stable, so each
    # group keeps its order_col order and its ties in row order.
    u_code = pd.factorize(df["user_id"].to_numpy())[0]  # [R]
    s_code = pd.factorize(df["source"].to_numpy())[0] if by_source else np.zeros(len(df), dtype=np.int64)
    o = np.lexsort((df[order_col].to_numpy(), s_code, u_code))  # [R] users, then sources, then order
    u_code, s_code = u_code[o], s_code[o]
    users = df["user_id"].to_numpy()[o]
    src = df["source"].to_numpy()[o]
    item = df["item_id"].to_numpy()[o]
    rows = item_index.get_indexer(item).astype(np.int64)
    score = df["score"].to_numpy(np.float64)[o]
    anchor = df["anchor"].fillna("").to_numpy()[o] if "anchor" in df else np.full(len(df), "", dtype=object)
    change = np.flatnonzero((u_code[1:] != u_code[:-1]) | (s_code[1:] != s_code[:-1])) + 1
    out: dict[Any, Any] = {}
    for a, b in zip(np.r_[0, change], np.r_[change, len(df)], strict=True):
        pool = Pool(item[a:b], rows[a:b], score[a:b], src[a:b], anchor[a:b])
        if by_source:
            out.setdefault(users[a], {})[src[a]] = pool
        else:
            out[users[a]] = pool
    return out


def build_fallbacks(cfg: Config, ctx: Context) -> dict[str, list[dict[str, Any]]]:
    """Segment homepages: 'all' plus one per top-level category ('cat:<name>')."""
    stats = ctx.item_stats
    ok = ctx.servable
    pop = stats["pop_score"].to_numpy(np.float64)
    trend = stats["trend_score"].to_numpy(np.float64)
    top_level = np.array([c.split(">")[0].strip() if c else "" for c in ctx.catalog.category], dtype=object)
    new_start = np.datetime64(ctx.cutoff, "us") - np.timedelta64(cfg.retrieve.new_item_days, "D")
    is_new = ctx.catalog.created_at >= new_start
    size = max(s.size for s in cfg.rerank.sections)
    segments = {"all": np.ones(len(pop), dtype=bool)}
    for c in sorted(set(top_level) - {""}):
        segments[f"cat:{c}"] = top_level == c

    def ranked(mask: np.ndarray, score: np.ndarray, used: set[int], n: int, cap: int | None) -> list[int]:
        """The n best rows by score, at most cap per category while other categories
        can fill the list; then the best of those the cap held back."""
        hits = np.flatnonzero(mask & ok & (score > 0))
        order = [int(r) for r in hits[np.lexsort((hits, -score[hits]))] if int(r) not in used]
        out: list[int] = []
        held: list[int] = []
        counts: dict[Any, int] = {}
        for r in order:
            if len(out) >= n:
                break
            c = ctx.catalog.category[r]
            if cap is not None and c and counts.get(c, 0) >= cap:
                held.append(r)
                continue
            out.append(r)
            counts[c] = counts.get(c, 0) + 1
        out += held[: n - len(out)]
        used.update(out)
        return out

    def slots(rows: list[int], score: np.ndarray, source: str, reason: str) -> list[dict[str, Any]]:
        return [
            {
                "item_id": str(ctx.catalog.ids[r]),
                "score": page_score(float(score[r])),
                "source": source,
                "reason": reason,
            }
            for r in rows
        ]

    out: dict[str, list[dict[str, Any]]] = {}
    created_score = (ctx.catalog.created_at - np.datetime64(0, "us")).astype(np.float64)
    for seg, mask in segments.items():
        used: set[int] = set()
        label = "the whole shop" if seg == "all" else seg[4:]
        secs = []
        p = ranked(mask, pop, used, size, cfg.rerank.category_cap)
        if p:
            secs.append({"key": "popular", "title": "Popular right now", "items": slots(p, pop, "popularity", "Popular right now")})  # fmt: skip
        t = ranked(mask, trend, used, size, cfg.rerank.category_cap)
        if t:
            secs.append({"key": "trending", "title": f"Trending in {label}", "items": slots(t, trend, "trending", f"Trending in {label}")})  # fmt: skip
        n = ranked(mask & is_new, created_score - created_score.min() + 1.0, used, size, cfg.rerank.category_cap)
        if n:
            secs.append({"key": "new_arrivals", "title": "New arrivals", "items": slots(n, np.ones(len(pop)), "new_arrivals", "Just arrived")})  # fmt: skip
        if secs:
            out[seg] = secs
    return out


def prepare_rerank(cfg: Config, rd: RunDir) -> dict[str, Any]:
    """The segment pages (slates/fallback.parquet), once per night, before the shards."""
    ctx = load_context(cfg, rd, "full", with_vectors=False, with_users=False)
    fallbacks = build_fallbacks(cfg, ctx)
    out = rd.path("slates")
    out.mkdir(parents=True, exist_ok=True)
    segs = sorted(fallbacks)
    write_part(pd.DataFrame({"segment": segs, "sections": [jsonio.dumps(fallbacks[s], compact=True) for s in segs]}),
               out / "fallback.parquet")  # fmt: skip
    return {"fallback_segments": len(fallbacks)}


def run_rerank(cfg: Config, rd: RunDir, shard: int, n_shards: int) -> dict[str, Any]:
    """Diversified, sectioned pages for one user shard: its parts of slates.parquet and
    slate_items.parquet."""
    ctx = load_context(cfg, rd, "full", shard=(shard, n_shards))
    by_source = PartReader(existing_part(rd, n_shards, shard, "candidates", "by_source.parquet"))
    ranked = PartReader(existing_part(rd, n_shards, shard, "candidates", "ranked.parquet"))
    pages_out = PartWriter(part_path(rd, n_shards, shard, "slates", "slates.parquet"))
    items_out = PartWriter(part_path(rd, n_shards, shard, "slates", "slate_items.parquet"))
    users = sections = 0
    for batch in batches(sorted(ctx.user_row), cfg.scale.batch_users):
        slates = build_slates(cfg, ctx, ranked.rows(batch), by_source.rows(batch), batch)
        pages, items = slate_frames(slates)
        pages_out.write(pages)
        items_out.write(items)
        users += len(slates)
        sections += sum(len(v) for v in slates.values())
    empty_pages, empty_items = slate_frames({})
    return {"users": users, "items": items_out.close(empty_items), "sections": sections,
            "pages": pages_out.close(empty_pages)}  # fmt: skip


def finish_rerank(cfg: Config, rd: RunDir, prepared: dict[str, Any], infos: list[dict[str, Any]]) -> dict[str, Any]:
    users = sum(i["users"] for i in infos)
    info = {
        "users": users,
        "fallback_segments": prepared["fallback_segments"],
        "items_per_page_mean": round(sum(i["items"] for i in infos) / max(users, 1), 2),
        "sections_per_page_mean": round(sum(i["sections"] for i in infos) / max(users, 1), 2),
        "method": cfg.rerank.method,
    }
    log.info("rerank: %s", info)
    return info


def build_slates(
    cfg: Config, ctx: Context, ranked: pd.DataFrame, by_source: pd.DataFrame, users: list[str] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """user_id -> sections, for every user (of users, default all in ctx) with at least
    events.min_history items."""
    builder = SectionBuilder(cfg, ctx)
    lengths = ctx.seqs.lengths()
    idx = ctx.catalog.index()
    r_pools = split_pools(ranked, idx, "rank", by_source=False)
    s_pools = split_pools(by_source, idx, "source_rank", by_source=True)
    users = sorted(u for u in (ctx.user_row if users is None else users)
                   if u in ctx.user_row and lengths[ctx.user_row[u]] >= cfg.events.min_history)  # fmt: skip
    slates: dict[str, list[dict[str, Any]]] = {}
    t0 = time.time()
    with Progress(len(users), "rerank", "users") as bar:
        for i in range(0, len(users), MMR_CHUNK):
            chunk = users[i : i + MMR_CHUNK]
            slates.update(builder.build_pages(chunk, r_pools, s_pools))
            bar.update(len(chunk))
    log.info("rerank: %d users in %.1fs (%.0f users/s)", len(users), time.time() - t0,
             len(users) / max(time.time() - t0, 1e-9))  # fmt: skip
    return slates


def slate_frames(slates: dict[str, list[dict[str, Any]]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """user -> sections as the two contract tables: slates (user_id, sections JSON: the
    site's payload) and slate_items (one row per slot, in reading order)."""
    users = sorted(slates)
    pages = pd.DataFrame({"user_id": users, "sections": [jsonio.dumps(slates[u], compact=True) for u in users]})
    flat = [
        (u, sec["key"], pos, it["item_id"], it["score"], it["source"], it["reason"])
        for u in users
        for sec in slates[u]
        for pos, it in enumerate(sec["items"], 1)
    ]
    items = pd.DataFrame(flat, columns=["user_id", "section", "position", "item_id", "score", "source", "reason"])
    return pages, items


def flatten(sections: list[dict[str, Any]]) -> list[str]:
    """A page's item ids in reading order (section by section)."""
    return [it["item_id"] for s in sections for it in s["items"]]
