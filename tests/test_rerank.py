import numpy as np

from recsys.rerank import dpp_select, leaf, mmr_select, page_score


def _vecs():
    # items 0 and 1 are near duplicates, 2 is orthogonal
    v = np.array([[1.0, 0.0], [0.995, 0.0998], [0.0, 1.0]], dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_mmr_pure_relevance_is_sorting():
    assert mmr_select(np.array([0.2, 0.9, 0.5]), _vecs(), 3, lam=1.0) == [1, 2, 0]


def test_mmr_diversifies_near_duplicates():
    rel = np.array([1.0, 0.95, 0.5])
    assert mmr_select(rel, _vecs(), 2, lam=1.0) == [0, 1]
    # lam 0.5: after 0, gain(1) = .5*.9 - .5*.995 < gain(2) = .5*0 - 0 -> 2
    assert mmr_select(rel, _vecs(), 2, lam=0.5) == [0, 2]


def test_category_cap_holds_while_other_categories_are_left():
    rel = np.array([1.0, 0.9, 0.8])
    cats = np.array(["A", "A", "B"], dtype=object)
    assert mmr_select(rel, _vecs(), 2, lam=1.0, cats=cats, cap=1) == [0, 2]
    # Only A is left for the third slot: the section is filled, not left short.
    assert mmr_select(rel, _vecs(), 3, lam=1.0, cats=cats, cap=1) == [0, 2, 1]


def test_one_category_or_none_does_not_shorten_a_section():
    rel = np.array([1.0, 0.9, 0.8])
    for labels in (["A", "A", "A"], ["", "", ""], [None, None, None]):
        assert mmr_select(rel, _vecs(), 3, lam=1.0, cats=np.array(labels, dtype=object), cap=1) == [0, 1, 2]
    # No category is no label: two uncategorised items pass a cap of 1 before B's item.
    assert mmr_select(rel, _vecs(), 2, lam=1.0, cats=np.array(["", "", "B"], dtype=object), cap=1) == [0, 1]


def test_dpp_prefers_diverse_set():
    rel = np.array([1.0, 0.95, 0.5])
    picked = dpp_select(rel, _vecs(), 2, theta=0.5)
    assert picked[0] == 0 and picked[1] == 2
    assert dpp_select(rel, _vecs(), 5, theta=0.5, cats=np.array(["A", "A", "B"], dtype=object), cap=1) == [0, 2]
    # Orthogonal items (nothing to trade off): by relevance, the cap holds A's second
    # item back until only A is left.
    eye = np.eye(3, dtype=np.float32)
    assert dpp_select(rel, eye, 3, theta=0.5, cats=np.array(["A", "A", "B"], dtype=object), cap=1) == [0, 2, 1]
    assert dpp_select(rel, eye, 3, theta=0.5, cats=np.array(["", "", "B"], dtype=object), cap=1) == [0, 1, 2]


def test_leaf():
    assert leaf("Kitchen>Knives") == "Knives"
    assert leaf("Drama") == "Drama"
    assert leaf("") == ""


def test_page_score_keeps_four_significant_digits():
    import json

    got = [page_score(x) for x in (1.1451234, -0.000123456, 12345.678, 0.1 + 0.2, 0.0)]
    assert got == [1.145, -0.0001235, 12350.0, 0.3, 0.0]
    assert json.dumps(got) == "[1.145, -0.0001235, 12350.0, 0.3, 0.0]"  # the shortest text, no float noise


def test_pools_drop_non_finite_scores():
    """Issue 8, item 4: a NaN or Infinity score would reach a page (jsonb refuses it)."""
    import pandas as pd

    from recsys.rerank import split_pools

    df = pd.DataFrame({"user_id": ["u"] * 4, "item_id": ["a", "b", "c", "d"], "source": ["s"] * 4,
                       "score": [1.0, np.nan, np.inf, 0.5], "rank": [1, 2, 3, 4]})  # fmt: skip
    pools = split_pools(df, pd.Index(["a", "b", "c", "d"]), "rank", by_source=False)
    assert list(pools["u"].item) == ["a", "d"] and np.isfinite(pools["u"].score).all()


def test_discover_interleaves_ranked_tail_and_text_matched_items():
    """tiny_context popularity (pop_score) i3 5 > i0 2 > i1 1 > i2 0; with the long-tail
    quantile at 0.5 the tail is i1 and i2. Top picks (one slot) takes i2 (best score, least
    popular). Discover then gets the ranked tail left (i1) and the long_tail source (i0;
    its i1 is already in the ranked tail), each slot with its own reason."""
    from recsys.config import Config, RerankConfig, SectionSpec
    from recsys.rerank import Pool, SectionBuilder
    from tests.test_rank import tiny_context

    ctx = tiny_context()
    sections = [
        SectionSpec(key="top_picks", title="Top", size=1),
        SectionSpec(key="discover", title="Discover", size=4),
    ]
    ctx.cfg = Config(rerank=RerankConfig(long_tail_quantile=0.5, sections=sections))

    def pool(rows, source):
        rows = np.array(rows)
        return Pool(ctx.catalog.ids[rows], rows, np.linspace(1, 0.5, len(rows)),
                    np.array([source] * len(rows), dtype=object), np.array([""] * len(rows), dtype=object))  # fmt: skip

    pages = SectionBuilder(ctx.cfg, ctx).build_pages(
        ["u0", "nobody"], {"u0": pool([2, 3, 1, 0], "two_tower")}, {"u0": {"long_tail": pool([0, 1], "long_tail")}}
    )
    assert list(pages) == ["u0"]  # no candidates, no page
    (top, disc) = pages["u0"]
    assert (top["key"], [s["item_id"] for s in top["items"]]) == ("top_picks", ["i2"])
    assert disc["title"] == "Discover"
    assert [(s["item_id"], s["source"]) for s in disc["items"]] == [("i1", "two_tower"), ("i0", "long_tail")]
    assert disc["items"][0]["reason"].startswith("Off the beaten track") and "Few people" in disc["items"][1]["reason"]


def test_mmr_batch_rows_are_independent_of_the_batch():
    """Each row of a padded batch picks exactly what it picks alone, caps and ties included."""
    from recsys.rerank import mmr_select_batch

    rng = np.random.default_rng(3)
    B, n, d = 40, 30, 8
    lens = rng.integers(0, n + 1, B)
    rel = np.round(rng.random((B, n)), 1)  # rounded: ties happen
    rel[np.arange(n)[None, :] >= lens[:, None]] = np.nan
    v = rng.normal(size=(B, n, d)).astype(np.float32)
    v /= np.linalg.norm(v, axis=2, keepdims=True)
    cats = rng.integers(0, 4, (B, n))
    both = mmr_select_batch(rel, v, 12, 0.7, cats, cap=3)
    for b in range(B):
        m = lens[b]
        alone = mmr_select_batch(rel[b : b + 1, :m], v[b : b + 1, :m], 12, 0.7, cats[b : b + 1, :m], cap=3)[0]
        assert both[b].tolist() == alone.tolist()
        picked = [j for j in alone if j >= 0]
        assert len(set(picked)) == len(picked) == min(12, m)  # never short while candidates are left
        count = np.bincount(cats[b, picked], minlength=4)
        if count.max() > 3:  # past the cap only once every category under it is used up
            left = np.setdiff1d(np.arange(m), picked)
            assert (count[cats[b, left]] >= 3).all()
    assert (both[lens == 0] == -1).all()  # an empty row picks nothing


def test_pool_without_drops_used_rows_wherever_they_are():
    from recsys.rerank import Pool

    ids = np.array(["a", "b", "c", "d", "e"], dtype=object)
    pool = Pool(ids, np.array([5, 3, 9, 3, 120]), np.arange(5.0), ids, ids)
    assert pool.without({3, 100}).rows.tolist() == [5, 9, 120]  # 100 is past every row, 3 twice
    assert pool.without({0, 200}).rows.tolist() == [5, 3, 9, 3, 120]
    assert pool.without({120, 5, 9, 3}).item.tolist() == [] and pool.without(set()) is pool


def test_sections_and_fallbacks_fill_where_the_catalog_has_one_category_or_none():
    """A shop whose catalog has no categories (the field is optional) or one: with a cap of
    1 the top picks used to stop at one slot and every fallback section at one item."""
    from recsys.config import Config, RerankConfig, SectionSpec
    from recsys.rerank import Pool, SectionBuilder, build_fallbacks
    from tests.test_rank import tiny_context

    for label in ("", "Shop"):
        ctx = tiny_context()
        ctx.catalog.category = np.array([label] * 4, dtype=object)
        ctx.cfg = Config(
            rerank=RerankConfig(category_cap=1, sections=[SectionSpec(key="top_picks", title="Top", size=4)])
        )
        rows = np.array([2, 3, 1, 0])
        pool = Pool(ctx.catalog.ids[rows], rows, np.linspace(1, 0.5, 4), np.array(["two_tower"] * 4, dtype=object),
                    np.array([""] * 4, dtype=object))  # fmt: skip
        (top,) = SectionBuilder(ctx.cfg, ctx).build_pages(["u0"], {"u0": pool}, {"u0": {}})["u0"]
        assert sorted(s["item_id"] for s in top["items"]) == ["i0", "i1", "i2", "i3"]
        # pop_score i3 5 > i0 2 > i1 1 (i2 0 is never popular): all three, in that order.
        popular = build_fallbacks(ctx.cfg, ctx)["all"][0]
        assert (popular["key"], [s["item_id"] for s in popular["items"]]) == ("popular", ["i3", "i0", "i1"])


def test_fallback_cap_holds_back_then_fills():
    """Categories A A B B (tiny_context), popularity i3 5 > i2 4 > i0 1 > i1 0.5, cap 1:
    the most popular of each category first (i3, i0), then the held-back ones by
    popularity (i2, i1), not i3, i2, i0, i1."""
    from recsys.config import Config, RerankConfig
    from recsys.rerank import build_fallbacks
    from tests.test_rank import tiny_context

    ctx = tiny_context()
    ctx.item_stats["pop_score"] = [1.0, 0.5, 4.0, 5.0]
    ctx.cfg = Config(rerank=RerankConfig(category_cap=1))
    popular = build_fallbacks(ctx.cfg, ctx)["all"][0]
    assert [s["item_id"] for s in popular["items"]] == ["i3", "i0", "i2", "i1"]


def test_trending_section_without_a_category_names_the_whole_shop():
    from recsys.config import Config, RerankConfig, SectionSpec
    from recsys.rerank import Pool, SectionBuilder
    from tests.test_rank import tiny_context

    ctx = tiny_context()
    ctx.cfg = Config(rerank=RerankConfig(sections=[SectionSpec(key="top_picks", title="Top", size=1),
                                                   SectionSpec(key="trending", title="Trending in {category}", size=2)]))  # fmt: skip
    rows = np.array([2, 0])
    trend = Pool(ctx.catalog.ids[rows], rows, np.array([3.0, 1.0]), np.array(["trending"] * 2, dtype=object),
                 np.array(["", ""], dtype=object))  # fmt: skip
    top = Pool(ctx.catalog.ids[[3]], np.array([3]), np.array([1.0]), np.array(["two_tower"], dtype=object),
               np.array([""], dtype=object))  # fmt: skip
    (_, sec) = SectionBuilder(ctx.cfg, ctx).build_pages(["u0"], {"u0": top}, {"u0": {"trending": trend}})["u0"]
    assert sec["title"] == "Trending in the whole shop"
    assert [(s["item_id"], s["reason"]) for s in sec["items"]] == [("i2", "Trending in the whole shop"),
                                                                   ("i0", "Trending in the whole shop")]  # fmt: skip
    assert all("anchor" not in s for s in sec["items"])
