"""Contract tests every candidate source must pass, on the real tiny end-to-end run."""

import json

import numpy as np
import pandas as pd
import pytest

from recsys.config import Config, ModelConfig, RetrieveConfig
from recsys.retrieve import CANDIDATE_COLUMNS, SOURCES, FaissIndex, TorchIndex, blend, load_context

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def ctx(tiny_run):
    from recsys.rundir import RunDir
    from tests.conftest import RUN_DATE

    cfg, _ = tiny_run
    return load_context(cfg, RunDir(cfg, RUN_DATE), "full")


@pytest.mark.parametrize("name", list(SOURCES))
def test_source_contract(ctx, name):
    users = [*sorted(ctx.user_row)[:60], "unknown-user"]
    k = 7
    df = SOURCES[name](ctx).generate(users, k)
    assert list(df.columns) == CANDIDATE_COLUMNS
    assert set(df["source"]) <= {name}
    assert len(df) > 0, f"{name} produced nothing"
    assert df.groupby("user_id").size().max() <= k
    assert not df.duplicated(["user_id", "item_id"]).any()
    row = {x: i for i, x in enumerate(ctx.catalog.ids)}
    for u, g in df.groupby("user_id"):
        rows = [row[x] for x in g["item_id"]]
        assert ctx.servable[rows].all(), "unavailable item recommended"
        assert not set(rows) & ctx.blocked(u), "excluded item recommended"
        g = g.sort_values("source_rank")
        assert g["source_rank"].tolist() == list(range(1, len(g) + 1))
        assert (np.diff(g["score"].to_numpy()) <= 1e-9).all(), "ranks not by descending score"


def test_faiss_and_torch_backends_agree():
    rng = np.random.default_rng(0)
    items = rng.normal(size=(500, 16)).astype(np.float32)
    q = rng.normal(size=(20, 16)).astype(np.float32)
    fs, fr = FaissIndex(items, RetrieveConfig(index="flat")).search(q, 10)
    ts, tr = TorchIndex(items, "cpu").search(q, 10)
    assert (fr == tr).all() and np.allclose(fs, ts, atol=1e-4)
    exact = np.argsort(-(q @ items.T), axis=1)[:, :10]
    assert (fr == exact).all()
    ivf = FaissIndex(items, RetrieveConfig(index="ivf", ivf_nlist=4, ivf_nprobe=4))
    assert ivf.backend.startswith("faiss-cpu-ivf")
    assert (ivf.search(q, 10)[1] == exact).all()  # nprobe = nlist: exhaustive


def test_auto_index_is_ivf_from_the_threshold_and_exact_below():
    rng = np.random.default_rng(1)
    items = rng.normal(size=(2000, 16)).astype(np.float32)
    q = rng.normal(size=(20, 16)).astype(np.float32)
    cfg = RetrieveConfig(ivf_min_items=2000, ivf_nlist=32)  # the default 64 probes > 32 lists: exhaustive
    ivf = FaissIndex(items, cfg)
    assert ivf.backend == "faiss-cpu-ivf32" and ivf.index.nprobe == 32
    assert (ivf.search(q, 10)[1] == np.argsort(-(q @ items.T), axis=1)[:, :10]).all()
    assert FaissIndex(items[:1999], cfg).backend == "faiss-cpu-flat"


def test_a_trained_index_is_kept_once_and_read_only_for_its_own_vectors(tmp_path, caplog):
    from recsys.retrieve import save_index, saved_or_built_index

    rng = np.random.default_rng(2)
    items = rng.normal(size=(800, 16)).astype(np.float32)
    q = rng.normal(size=(30, 16)).astype(np.float32)
    path = tmp_path / "retrieve" / "index_full.faiss"
    built = FaissIndex(items, RetrieveConfig(index="ivf", ivf_nlist=8, ivf_nprobe=2))  # approximate
    assert save_index(built, items, path) and path.is_file()
    # Another setting would build 16 lists: 8 means the saved, trained index was read.
    other = RetrieveConfig(index="ivf", ivf_nlist=16, ivf_nprobe=2)
    read = saved_or_built_index(items, other, path)
    assert read.backend == "faiss-cpu-ivf8"
    assert all((a == b).all() for a, b in zip(read.search(q, 10), built.search(q, 10), strict=True))
    changed = items.copy()
    changed[0, 0] += 1e-3  # one number of other vectors: not this index's
    assert saved_or_built_index(changed, other, path).backend == "faiss-cpu-ivf16"
    assert "built from other vectors" in caplog.text
    # A flat index trains nothing: nothing is kept, and a stale file is removed.
    assert not save_index(FaissIndex(items, RetrieveConfig(index="flat")), items, path) and not path.exists()


def test_prepare_keeps_the_trained_index_for_the_shards_when_they_outnumber_the_workers(tiny_run, tiny_rd):
    from recsys.retrieve import INDEX_FILE, prepare_index
    from recsys.shards import PLAN_FILE

    cfg, _ = tiny_run
    plan = tiny_rd.path(PLAN_FILE)
    saved_plan = plan.read_text()
    ivf = cfg.model_copy(update={"retrieve": cfg.retrieve.model_copy(update={"index": "ivf", "ivf_nlist": 4}),
                                 "scale": cfg.scale.model_copy(update={"workers": 1})})  # fmt: skip
    path = tiny_rd.path(*INDEX_FILE)
    try:
        assert isinstance(prepare_index(ivf, tiny_rd)["index"], str) and not path.exists()  # 1 shard, 1 worker
        plan.write_text(json.dumps({"shards": 3}))
        info = prepare_index(ivf, tiny_rd)["index"]
        assert info["saved"] and info["backend"] == "faiss-cpu-ivf4" and path.is_file()
        shard = load_context(ivf, tiny_rd, "full", shard=(0, 3))
        shard.index_file = path
        other = ivf.model_copy(update={"retrieve": ivf.retrieve.model_copy(update={"ivf_nlist": 8})})
        shard.cfg = other  # a shard that built its own would have 8 lists
        assert shard.index()[0].backend == "faiss-cpu-ivf4"
    finally:
        plan.write_text(saved_plan)
        path.unlink(missing_ok=True)


def test_blend_by_hand():
    c = pd.DataFrame({
        "user_id": ["u"] * 4, "item_id": ["a", "b", "a", "c"], "score": [9, 8, 7, 6],
        "source": ["s1", "s1", "s2", "s2"], "source_rank": [1, 2, 1, 2], "anchor": ["", "", "x", ""],
    })  # fmt: skip
    out = blend(c, {"s1": 1.0, "s2": 2.0}, rrf_k=0.0, k=10)
    # a: 1/1 + 2/1 = 3 (s2 contributes most); c: 2/2 = 1; b: 1/2
    assert out[["item_id", "rank", "source", "sources"]].values.tolist() == [
        ["a", 1, "s2", "s1,s2"], ["c", 2, "s2", "s2"], ["b", 3, "s1", "s1"]]  # fmt: skip
    assert out["score"].tolist() == [3.0, 1.0, 0.5]
    assert out.iloc[0]["anchor"] == "x"


def test_blend_ties_weights_and_cut():
    """Two users, three sources. u1: b gets 1/10 + 1/5 (s1 rank 10, s2 rank 5) and a gets
    0.3 x 1/1 (s3): equal in exact arithmetic, but 0.1 + 0.2 = 0.30000000000000004 in
    floats, so the tie rule (lower item id first) decides, not the last bit. s0 has
    weight 0: its item z is in no list. k = 2 cuts u1's third item (c, 1/20)."""
    c = pd.DataFrame({
        "user_id": ["u1", "u1", "u1", "u1", "u1", "u0", "u0"],
        "item_id": ["b", "b", "a", "c", "z", "y", "x"],
        "score": [0.0] * 7,
        "source": ["s1", "s2", "s3", "s1", "s0", "s1", "s2"],
        "source_rank": [10, 5, 1, 20, 1, 1, 1],
        "anchor": ["p", "q", "", "", "", "", ""],
    })  # fmt: skip
    out = blend(c, {"s0": 0.0, "s1": 1.0, "s2": 1.0, "s3": 0.3}, rrf_k=0.0, k=2)
    # u0: x 1/1 from s2 and y 1/1 from s1 tie: x first. u1: a and b tie: a first.
    assert out[["user_id", "item_id", "rank", "source", "sources", "anchor"]].values.tolist() == [
        ["u0", "x", 1, "s2", "s2", ""], ["u0", "y", 2, "s1", "s1", ""],
        ["u1", "a", 1, "s3", "s3", ""], ["u1", "b", 2, "s2", "s1,s2", "q"]]  # fmt: skip
    assert out["score"].tolist() == pytest.approx([1.0, 1.0, 0.3, 0.3])
    assert blend(c[c["source"] == "s0"], {"s0": 0.0}, 0.0, 5).empty


def test_source_labels_by_hand_with_few_and_many_sources():
    """Bit j of a mask names names[j]; a lookup table for a registry of a few sources and
    np.unique for a long one give the same labels."""
    from recsys.retrieve import source_labels

    names = ["a", "b", "c"]
    assert source_labels(np.array([0b101, 0b010, 0b101, 0b111, 0]), names).tolist() == ["a,c", "b", "a,c", "a,b,c", ""]
    assert len(source_labels(np.zeros(0, dtype=np.int64), names)) == 0
    many = [f"s{j:02d}" for j in range(14)]
    assert source_labels(np.array([1 << 13 | 1, 2]), many).tolist() == ["s00,s13", "s01"]


def test_text_known_sources_split_the_items_without_history():
    """tiny_context: i0 (2 events) and i1 (1 event) are old, i2 (0 events) arrived 10
    days before the cutoff, i3 has 5 events. The user vector is i0's axis."""
    from recsys.retrieve import LongTailSource, NewArrivalsSource
    from tests.test_rank import tiny_context

    ctx = tiny_context()
    tail = LongTailSource(ctx).generate(["u0", "nobody"], k=5)
    # old and below model.id_embedding_min_count (3) events, by the user vector: i0 . u = 1, i1 . u = 0
    assert tail["item_id"].tolist() == ["i0", "i1"] and tail["source_rank"].tolist() == [1, 2]
    assert tail["score"].tolist() == pytest.approx([1.0, 0.0])
    assert NewArrivalsSource(ctx).generate(["u0"], k=5)["item_id"].tolist() == ["i2"]
    # The next user batch makes the sources again; each searches the index built first.
    built = ctx._subset_indexes["long_tail"]
    assert LongTailSource(ctx).generate(["u0"], k=5)["item_id"].tolist() == ["i0", "i1"]
    assert ctx._subset_indexes["long_tail"] is built and set(ctx._subset_indexes) == {"long_tail", "new_arrivals"}
    ctx2 = tiny_context()
    ctx2.cfg = Config(model=ModelConfig(id_embedding_min_count=2))  # i0's 2 events now earn an id embedding
    assert LongTailSource(ctx2).generate(["u0"], k=5)["item_id"].tolist() == ["i1"]


def test_blocked_mask_and_pairs_match_each_users_own_exclusions():
    from types import SimpleNamespace

    from recsys.retrieve import blocked_mask, blocked_pairs

    rng = np.random.default_rng(4)
    n_items, users = 40, [f"u{i}" for i in range(30)]
    excluded = {u: set(rng.choice(n_items, size=int(rng.integers(0, 8)), replace=False).tolist()) for u in users}
    excluded["u3"] = {n_items - 1}  # the last row: its key borders the next user's first
    servable = rng.random(n_items) > 0.2
    ctx = SimpleNamespace(catalog=SimpleNamespace(ids=np.arange(n_items)), servable=servable,
                          blocked=lambda u: excluded.get(u, set()))  # fmt: skip
    rows = rng.integers(-1, n_items, size=(len(users), 25))  # -1: no row
    rows[4, 0] = 0  # u4's row 0 (u3's last key + 1) is not u3's exclusion
    got = blocked_mask(ctx, users, rows)  # type: ignore[arg-type]
    want = np.array([[r < 0 or not servable[r] or int(r) in excluded[u] for r in rows[i]] for i, u in enumerate(users)])
    np.testing.assert_array_equal(got, want)
    assert want.any() and not want.all()
    # Pairs with users in any order and repeated (the co-visitation source's (user, item)
    # rows): each pair judged by its own user's exclusions.
    pos = rng.integers(0, len(users), size=500)
    prow = rng.integers(-1, n_items, size=500)
    pos[:2], prow[:2] = [3, 4], [n_items - 1, 0]  # u3's excluded last row, u4's row 0 beside it
    got = blocked_pairs(ctx, users, pos, prow)  # type: ignore[arg-type]
    want = np.array([r < 0 or not servable[r] or int(r) in excluded[users[u]] for u, r in zip(pos, prow, strict=True)])
    np.testing.assert_array_equal(got, want)
    assert want[0] and want.any() and not want.all()


def test_item_item_is_fitted_once_before_the_shards_and_skipped_for_large_catalogs(tiny_run, tiny_rd):
    from recsys.retrieve import ITEM_ITEM_FILE, prepare_retrieve

    cfg, _ = tiny_run
    path = tiny_rd.path(*ITEM_ITEM_FILE)
    info = prepare_retrieve(cfg, tiny_rd)["item_item"]
    assert info["items"] > 0 and path.is_file()
    ctx = load_context(cfg, tiny_rd, "full")
    assert ctx.item_item.shape == (len(ctx.catalog.ids),) * 2
    assert (np.diff(ctx.item_item.indptr) <= cfg.retrieve.item_item_neighbors).all()
    small = cfg.model_copy(update={"retrieve": cfg.retrieve.model_copy(update={"item_item_max_items": 1})})
    assert prepare_retrieve(small, tiny_rd)["item_item"].startswith("off")
    assert not path.is_file() and load_context(small, tiny_rd, "full").item_item is None
    prepare_retrieve(cfg, tiny_rd)  # as the run left it, for the tests after this one
    assert path.is_file()


def test_trending_in_the_users_category_else_in_the_whole_shop():
    """tiny_context: u0 saw i0, i1, i0 (category A); trend i0 1, i2 3 (B), others 0. With
    categories u0 gets A's trending item; with none (the field is optional) what trends
    in the whole shop, anchor "", where it used to get nothing."""
    from recsys.retrieve import TrendingSource
    from tests.test_rank import tiny_context

    ctx = tiny_context()
    ctx.item_stats["trend_score"] = [1.0, 0.0, 3.0, 0.0]
    cols = ["user_id", "item_id", "anchor", "source_rank"]
    got = TrendingSource(ctx).generate(["u0", "stranger"], k=5)
    assert got[cols].values.tolist() == [["u0", "i0", "A", 1]]
    ctx.catalog.category = np.array([""] * 4, dtype=object)
    got = TrendingSource(ctx).generate(["u0", "stranger"], k=5)
    assert got[cols].values.tolist() == [["u0", "i2", "", 1], ["u0", "i0", "", 2]]
    assert SOURCES["trending"].reason("") == "Trending in the whole shop"
