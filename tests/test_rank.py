"""The ranking stage: features checked by hand on a tiny context, a planted pattern the
lambdarank model must find, and the stage's output contract on the tiny run."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest

from recsys.config import Config, load_config
from recsys.features import Catalog, Sequences
from recsys.rank import (
    FeatureSpace,
    PairLookup,
    common_rounds,
    grade_levels,
    pair_features,
    train_lambdarank,
    wide_candidates,
)
from recsys.retrieve import Context

CUTOFF = dt.date(2026, 11, 22)
DAY = 86400


def tiny_context() -> Context:
    """4 items; user u0 saw i0, i1, i0 (in that order); co-visitation i0 -> i2 (3.0),
    i0 -> i3 (1.0), i1 -> i2 (5.0); item vectors are axis vectors, i2 between i0 and i1."""
    ids = np.array(["i0", "i1", "i2", "i3"], dtype=object)
    catalog = Catalog(
        ids=ids, texts=["a", "b", "c", "d"], category=np.array(["A", "A", "B", "B"], dtype=object),
        available=np.ones(4, bool), created_at=np.array(["2026-11-01", "2026-11-01", "2026-11-12", "NaT"],
                                                          dtype="datetime64[us]"),
        title=ids.copy(), brand=np.array(["X", "Y", "X", ""], dtype=object),
        price=np.array([10.0, 20.0, 30.0, np.nan]),
    )  # fmt: skip
    t_end = int((np.datetime64(CUTOFF, "s") - np.datetime64(0, "s")).astype(np.int64))
    seqs = Sequences(
        user_ids=np.array(["u0"], dtype=object), offsets=np.array([0, 3]), items=np.array([0, 1, 0]),
        types=np.array([1, 1, 1]), ts=np.array([t_end - 3 * DAY, t_end - 2 * DAY, t_end - DAY]),
    )  # fmt: skip
    stats = pd.DataFrame({"n_events": [2, 1, 0, 5], "n_users": [1, 1, 0, 3], "pop_score": [2.0, 1.0, 0.0, 5.0],
                          "trend_score": [1.0, 1.0, 0.0, 0.0]})  # fmt: skip
    s = 1 / math.sqrt(2)
    vecs = np.array([[1, 0, 0], [0, 1, 0], [s, s, 0], [0, 0, 1]], dtype=np.float32)
    return Context(
        cfg=Config(), cutoff=CUTOFF, catalog=catalog, seqs=seqs, user_row={"u0": 0}, item_stats=stats,
        covis={0: (np.array([2, 3]), np.array([3.0, 1.0])), 1: (np.array([2]), np.array([5.0]))},
        excluded={}, item_vecs=vecs, item_bias=np.zeros(4, np.float32), temperature=1.0,
        user_vecs={"u0": np.array([1, 0, 0], dtype=np.float32)},
    )  # fmt: skip


def cands(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "score", "source", "source_rank", "anchor"])


def test_wide_candidates_one_row_per_pair_with_provenance():
    c = cands([("u0", "i2", 5.0, "covisitation", 1, "i1"), ("u0", "i2", 0.7, "two_tower", 3, ""),
               ("u0", "i3", 5.0, "popularity", 1, "")])  # fmt: skip
    w = wide_candidates(c).set_index("item_id")
    assert w.loc["i2", "covisitation_rank"] == 1 and w.loc["i2", "two_tower_rank"] == 3
    assert np.isnan(w.loc["i2", "popularity_rank"]) and w.loc["i2", "n_sources"] == 2
    assert w.loc["i2", "sources"] == "covisitation,two_tower" and w.loc["i2", "anchor"] == "i1"
    # source and anchor come from the same (best-ranked) source: the reason uses both
    c2 = cands([("u0", "i2", 5.0, "covisitation", 4, "i1"), ("u0", "i2", 0.9, "trending", 1, "Books")])
    w2 = wide_candidates(c2).iloc[0]
    assert (w2["source"], w2["anchor"]) == ("trending", "Books")
    assert w.loc["i3", "source"] == "popularity" and w.loc["i3", "n_sources"] == 1


def features_of_three(ctx: Context) -> tuple[dict, dict, dict]:
    """u0's features for i1 (two-tower), i2 (co-visitation from i1), i3 (popularity)."""
    c = cands([("u0", "i2", 5.0, "covisitation", 1, "i1"), ("u0", "i1", 1.0, "two_tower", 1, ""),
               ("u0", "i3", 5.0, "popularity", 1, "")])  # fmt: skip
    pairs = wide_candidates(c)
    X, names = pair_features(FeatureSpace.build(ctx), pairs, recent=3)
    f = {item: dict(zip(names, X[i].tolist(), strict=True)) for i, item in enumerate(pairs["item_id"])}
    return f["i1"], f["i2"], f["i3"]


def test_pair_features_by_hand():
    i1, i2, i3 = features_of_three(tiny_context())
    # co-visitation from the recent items [i0, i1, i0] (most recent first) to i2: 3, 5, 3
    assert (i2["covis_last"], i2["covis_max"], i2["covis_best_pos"]) == (3.0, 5.0, 1.0)
    assert i2["covis_recency"] == pytest.approx(3 + 5 / 2 + 3 / 3)
    assert np.isnan(i1["covis_best_pos"]) and i1["covis_max"] == 0.0
    # the user's own past: i1 once, 1 step back, 2 days before the cutoff; category A 3/3
    assert (i1["user_item_count"], i1["user_item_steps_since"]) == (1.0, 1.0)
    assert i1["user_item_days_since"] == pytest.approx(2.0)
    assert i1["user_category_share"] == 1.0 and i2["user_category_share"] == 0.0
    assert i2["user_brand_share"] == pytest.approx(2 / 3) and np.isnan(i3["user_brand_share"])
    assert i2["price_vs_user"] == pytest.approx(30 / (40 / 3)) and np.isnan(i3["price_vs_user"])
    # similarity to the recent items and the model score <u, v> / T + b with u = e0
    assert i2["sim_last"] == pytest.approx(1 / math.sqrt(2), abs=1e-6) and i3["sim_max"] == 0.0
    assert i2["model_score"] == pytest.approx(1 / math.sqrt(2), abs=1e-6) and i1["model_score"] == 0.0
    assert i2["item_age_days"] == pytest.approx(10.0) and np.isnan(i3["item_age_days"])
    assert (i2["user_history_len"], i2["user_days_since_last"]) == (3.0, pytest.approx(1.0))
    assert i3["popularity_rank"] == 1.0 and np.isnan(i3["two_tower_rank"])
    # the RRF blend: weight / (rrf_k + rank) summed over the sources (defaults: 1, 1, 0.1; k 20)
    assert i2["blend_score"] == pytest.approx(1 / 21) and i1["blend_score"] == pytest.approx(1 / 21)
    assert i3["blend_score"] == pytest.approx(0.1 / 21)


def test_hierarchy_features_by_hand():
    """Categories K>A (i0, i1), K>B (i2), H>B (i3); u0's history i0, i1, i0 is all K>A;
    pop 2, 1, 0, 5 and trend 1, 1, 0, 0 (tiny_context)."""
    ctx = tiny_context()
    ctx.catalog.category = np.array(["K>A", "K>A", "K>B", "H>B"], dtype=object)
    i1, i2, i3 = features_of_three(ctx)
    # the item's share of its category's / top level's popularity; NaN where the node has none
    assert i1["item_category_pop_share"] == pytest.approx(1 / 3) and np.isnan(i2["item_category_pop_share"])
    assert (i2["item_top_pop_share"], i3["item_top_pop_share"]) == (0.0, 1.0)
    assert i1["item_top_trend_share"] == 0.5 and np.isnan(i3["item_top_trend_share"])
    # the user's top-level share with one pseudo-step per node: K (3 + 1) / (3 + 2), H 1 / 5
    assert i2["user_top_share"] == pytest.approx(0.8) and i3["user_top_share"] == pytest.approx(0.2)
    assert i1["affinity_x_top_pop"] == pytest.approx(0.8 / 3) and i3["affinity_x_top_pop"] == pytest.approx(0.2)
    # categories: K>A (3 + 1) / (3 + 3) x trend share 1/2
    assert i1["affinity_x_category_trend"] == pytest.approx(1 / 3) and np.isnan(i2["affinity_x_category_trend"])


def test_common_rounds_is_the_argmax_of_the_mean_curve_over_the_rounds_all_folds_ran():
    # Fold 1 peaks at round 2, fold 2 at round 4 (beyond fold 1's last round); the mean
    # over rounds 1..3 is [0.25, 0.25, 0.35]: round 3, which neither fold picked alone.
    assert common_rounds([[0.1, 0.3, 0.2], [0.4, 0.2, 0.5, 0.6]]) == 3
    assert common_rounds([[0.2, 0.5, 0.1]]) == 2  # one split: its own best round


def test_pair_lookup_and_grades():
    lk = PairLookup(np.array([0, 2, 1]), np.array([5, 1, 5]), np.array([1.5, 2.5, 3.5]), n=10)
    assert lk.get(np.array([0, 1, 2, 2]), np.array([5, 5, 1, 2]), default=-1).tolist() == [1.5, 3.5, 2.5, -1]
    cfg = Config()  # weights view 1, click 2, cart 4, rate 4, purchase 8
    assert grade_levels(cfg, np.array([np.nan, 1.0, 2.0, 4.0, 8.0])).tolist() == [0, 1, 2, 3, 4]


def test_lambdarank_finds_a_planted_signal():
    """300 users x 20 candidates: the relevant item is the one with the largest
    `signal` (noise added to it); `noise` is unrelated. Held-out users must get the
    relevant item first far more often than chance (1/20), and signal must dominate."""
    rng = np.random.default_rng(0)
    n_u, n_c = 300, 20
    users = np.repeat(np.array([f"u{i:03d}" for i in range(n_u)]), n_c)
    signal = rng.normal(size=n_u * n_c)
    X = np.column_stack([signal + rng.normal(scale=0.3, size=n_u * n_c), rng.normal(size=n_u * n_c)])
    labels = np.zeros(n_u * n_c, dtype=np.int32)
    best = signal.reshape(n_u, n_c).argmax(1) + np.arange(n_u) * n_c
    labels[best] = 1
    cfg = load_config(overrides={"rank": {"min_data_in_leaf": 10, "n_estimators": 100}}, environ={})
    u_idx = np.repeat(np.arange(n_u), n_c)
    train, val, test = u_idx < 200, (u_idx >= 200) & (u_idx < 250), u_idx >= 250
    curve: list[float] = []
    booster = train_lambdarank(cfg, X.astype(np.float32), labels, users, ["signal", "noise"], train, val, curve=curve)
    assert len(curve) == booster.current_iteration() and common_rounds([curve]) == booster.best_iteration
    s = booster.predict(X[test].astype(np.float32)).reshape(-1, n_c)
    top1 = (labels[test].reshape(-1, n_c)[np.arange(len(s)), s.argmax(1)] == 1).mean()
    assert top1 > 0.5
    gain = dict(zip(["signal", "noise"], booster.feature_importance("gain"), strict=True))
    assert gain["signal"] > 3 * gain["noise"]


@pytest.mark.slow
def test_rank_stage_outputs(tiny_run, tiny_rd):
    from recsys import jsonio

    _cfg, results = tiny_run
    ranked = pd.read_parquet(tiny_rd.path("candidates", "ranked.parquet"))
    assert list(ranked.columns) == ["user_id", "item_id", "rank", "score", "source", "sources", "anchor"]
    assert (ranked.groupby("user_id")["rank"].apply(lambda r: list(r) == list(range(1, len(r) + 1)))).all()
    assert not ranked.duplicated(["user_id", "item_id"]).any()
    by_source = pd.read_parquet(tiny_rd.path("candidates", "by_source.parquet"))
    assert set(map(tuple, ranked[["user_id", "item_id"]].to_numpy())) <= set(
        map(tuple, by_source[["user_id", "item_id"]].to_numpy())
    )
    meta = jsonio.read(tiny_rd.path("ranker", "meta.json"))
    info = results["rank"]
    if meta.get("fallback"):  # a logged reason, and the blend or the best source is the ranked list
        order = meta.get("fallback_order", "blend")
        assert info["ranker"] == ("rrf-blend" if order == "blend" else order) and meta["fallback"]
        if order != "blend":
            assert set(ranked["source"]) == {order}
    else:
        assert info["ranker"].startswith("lightgbm-lambdarank") and tiny_rd.path("ranker", "model.txt").is_file()
        assert {n for n, _ in meta["feature_importance_gain"]} == set(meta["features"])


def test_unlearned_orders_and_a_source_as_the_ranked_list():
    from recsys.rank import source_order, unlearned_orders

    c = cands([("u0", "i2", 5.0, "covisitation", 1, "i1"), ("u0", "i1", 0.9, "two_tower", 1, ""),
               ("u0", "i3", 0.5, "two_tower", 2, ""), ("u1", "i0", 2.0, "covisitation", 1, "i3")])  # fmt: skip
    pairs = wide_candidates(c)  # u0: i1, i2, i3; u1: i0
    orders = unlearned_orders(Config())
    assert next(iter(orders)) == "blend" and {"two_tower", "covisitation", "item_item"} <= set(orders)
    np.testing.assert_array_equal(orders["two_tower"](pairs), [-1.0, -np.inf, -2.0, -np.inf])
    np.testing.assert_allclose(orders["blend"](pairs), [1 / 21, 1 / 21, 1 / 22, 1 / 21])
    r = source_order(c, "two_tower", k=1)
    assert r[["user_id", "item_id", "rank", "source", "sources"]].values.tolist() == [
        ["u0", "i1", 1, "two_tower", "two_tower"]
    ]


def test_empty_candidates_give_an_empty_feature_matrix():
    ctx = tiny_context()
    pairs = wide_candidates(cands([]))
    assert len(pairs) == 0 and "two_tower_rank" in pairs
    X, names = pair_features(FeatureSpace.build(ctx), pairs, recent=3)
    assert X.shape == (0, len(names)) and len(names) > 30


def test_validation_folds_cover_small_data_and_sample_large():
    from recsys.rank import validation_folds

    users = np.array([f"u{i}" for i in range(12)], dtype=object)
    folds = validation_folds(Config(), users)  # 12 < rank.cv_max_users: 5 folds
    assert len(folds) == 5 and sorted(len(f) for f in folds) == [2, 2, 2, 3, 3]
    assert set().union(*folds) == set(users) and sum(len(f) for f in folds) == 12  # disjoint, every user once
    big = load_config(overrides={"rank": {"cv_max_users": 10, "val_fraction": 0.25}}, environ={})
    (one,) = validation_folds(big, users)  # 12 >= cv_max_users: one seeded 25% sample
    assert len(one) == 3 and one == validation_folds(big, users)[0]


def test_refit_after_folds_always_after_one_split_up_to_the_limit():
    from recsys.rank import refits

    cfg = load_config(overrides={"rank": {"refit_max_users": 1000}}, environ={})
    assert refits(cfg, 300, 5) and refits(cfg, 50_000, 5)  # folds: every fold model saw 4/5
    assert refits(cfg, 1000, 1) and not refits(cfg, 1001, 1)
    off = load_config(overrides={"rank": {"refit_on_all": False}}, environ={})
    assert not refits(off, 300, 1) and refits(off, 300, 5)


def test_booster_settings_switch_to_the_large_regime_at_its_user_count():
    from recsys.rank import booster_settings

    cfg = load_config(overrides={"rank": {"large": {"min_users": 1000, "learning_rate": 0.2}}}, environ={})
    small, large = booster_settings(cfg, 999), booster_settings(cfg, 1000)
    assert small == {"learning_rate": 0.03, "num_leaves": 7, "min_data_in_leaf": 100, "early_stopping_rounds": 100}
    assert large == {"learning_rate": 0.2, "num_leaves": 31, "min_data_in_leaf": 100, "early_stopping_rounds": 30}
    off = load_config(overrides={"rank": {"large": {"min_users": 0}}}, environ={})
    assert booster_settings(off, 10**6) == small


def test_top_k_per_user_orders_by_score_and_breaks_ties_by_item():
    from recsys.rank import top_k_per_user

    pairs = pd.DataFrame({"user_id": ["a", "a", "a", "a", "b", "b"], "item_id": ["i1", "i2", "i3", "i4", "i1", "i9"],
                          "score": [0.5, 0.9, 0.5, 0.1, -1.0, 2.0]})  # fmt: skip
    top = top_k_per_user(pairs, 3)
    assert top[["user_id", "item_id", "rank"]].values.tolist() == [
        ["a", "i2", 1], ["a", "i1", 2], ["a", "i3", 3], ["b", "i9", 1], ["b", "i1", 2]]  # fmt: skip
    assert len(top_k_per_user(pairs.iloc[:0], 3)) == 0


def test_batched_pair_features_equal_the_whole_batch():
    from recsys.rank import batched_pair_features

    space = FeatureSpace.build(tiny_context())
    c = cands([("u0", "i2", 5.0, "covisitation", 1, "i1"), ("u0", "i1", 1.0, "two_tower", 1, ""),
               ("u9", "i3", 5.0, "popularity", 1, ""), ("u9", "i0", 2.0, "popularity", 2, "")])  # fmt: skip
    pairs = wide_candidates(c)
    whole, names = pair_features(space, pairs, recent=3)
    one_user_at_a_time, names1 = batched_pair_features(space, pairs, recent=3, batch_users=1)
    assert names1 == names and np.array_equal(whole, one_user_at_a_time, equal_nan=True)
    assert not np.isnan(whole[pairs["user_id"].to_numpy() == "u0"][:, names.index("sim_last")]).any()
    empty, names0 = batched_pair_features(space, pairs.iloc[:0], recent=3)
    assert empty.shape == (0, len(names)) and names0 == names


def test_distinct_users_read_off_sorted_runs_and_equal_np_unique_otherwise():
    from recsys.rank import distinct_users

    runs = np.array(["a", "a", "b", "c", "c", "c"], dtype=object)  # wide_candidates' order
    users, pos = distinct_users(runs)
    assert users.tolist() == ["a", "b", "c"] and pos.tolist() == [0, 0, 1, 2, 2, 2]
    # Not one sorted run per user (a user twice, or runs out of order): np.unique's answer.
    for u in (["b", "b", "a", "b"], ["c", "a", "a"]):
        arr = np.array(u, dtype=object)
        want_u, want_pos = np.unique(arr, return_inverse=True)
        got_u, got_pos = distinct_users(arr)
        assert got_u.tolist() == want_u.tolist() and got_pos.tolist() == want_pos.tolist()
    empty_u, empty_pos = distinct_users(runs[:0])
    assert len(empty_u) == 0 and empty_pos.dtype == np.int64 and len(empty_pos) == 0


def test_pair_features_are_row_major_float32_for_lightgbm():
    """LightGBM's predict reads a C-contiguous float32 block without a copy; the matrix is
    filled column-major, so its layout is checked, and each column holds its feature."""
    pairs = wide_candidates(cands([("u0", "i2", 5.0, "covisitation", 1, "i1"), ("u0", "i1", 1.0, "two_tower", 1, "")]))
    X, names = pair_features(FeatureSpace.build(tiny_context()), pairs, recent=3)
    assert X.dtype == np.float32 and X.flags["C_CONTIGUOUS"] and X.shape == (2, len(names))
    i2 = pairs["item_id"].tolist().index("i2")
    assert X[i2, names.index("covisitation_score")] == 5.0 and np.isnan(X[1 - i2, names.index("covisitation_score")])
    assert X[1 - i2, names.index("two_tower_score")] == 1.0


def test_per_user_dots_equal_each_pair_computed_alone():
    """Pairs in any order, users with different numbers of pairs (one with none)."""
    from recsys.rank import per_user_dots

    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(30, 8)).astype(np.float32)  # [N, d]
    Q = rng.normal(size=(4, 3, 8)).astype(np.float32)  # [Uq, K, d]
    u_pos = np.array([2, 0, 2, 2, 3, 0, 2])  # user 1 has no pair
    rows = rng.integers(0, 30, size=len(u_pos))
    got = per_user_dots(vecs, rows, u_pos, Q)
    want = np.array([[vecs[r] @ Q[u, k] for k in range(3)] for r, u in zip(rows, u_pos, strict=True)])
    assert got.shape == (7, 3) and np.allclose(got, want, atol=1e-5)
    assert per_user_dots(vecs, rows[:0], u_pos[:0], Q).shape == (0, 3)


def test_rank_candidates_the_same_in_any_batch_size():
    """Five users (u0 with history, four unknown to the context) scored by a real
    booster: batches of 2 users give the same ranked list as one batch of all."""
    import lightgbm as lgb

    from recsys.rank import Ranker, rank_candidates

    ctx = tiny_context()
    rows = [(f"u{u}", f"i{i}", float(u + i), src, 1 + i, "") for u in (4, 0, 3, 1, 2) for i in range(4)
            for src in ("popularity", "two_tower") if (u + i) % 3 or src == "popularity"]  # fmt: skip
    c = cands(rows)
    X, names = pair_features(FeatureSpace.build(ctx), wide_candidates(c), recent=3)
    y = np.random.default_rng(1).integers(0, 2, len(X))
    booster = lgb.train({"objective": "binary", "min_data_in_leaf": 1, "verbose": -1}, lgb.Dataset(X, y), 5)
    ranker = Ranker(model=booster, features=names)
    cfg = load_config(overrides={"rank": {"top_k": 3}}, environ={})
    whole = rank_candidates(cfg, ranker, ctx, c, batch_users=100)
    assert sorted(whole["user_id"].unique()) == ["u0", "u1", "u2", "u3", "u4"] and len(whole) == 15
    pd.testing.assert_frame_equal(rank_candidates(cfg, ranker, ctx, c, batch_users=2), whole)


def test_paired_gain_by_hand():
    from recsys.rank import paired_gain

    # d = [1, 0, 0, 0.5]: mean 0.375, sample sd sqrt(0.6875 / 3) = 0.478714, SE 0.239357
    g = paired_gain(np.array([1.0, 0.0, 0.5, 0.5]), np.array([0.0, 0.0, 0.5, 0.0]))
    assert g == {"gain": 0.375, "se": 0.23936, "z": 1.567}
    assert paired_gain(np.zeros(3), np.zeros(3)) == {"gain": 0.0, "se": 0.0, "z": 0.0}  # no evidence: no deploy


@pytest.mark.slow
def test_the_ranker_needs_a_clear_validation_lead_to_deploy(tiny_run, tiny_rd):
    from recsys.rank import fit_ranker

    cfg, _ = tiny_run
    strict = cfg.model_copy(update={"rank": cfg.rank.model_copy(update={"deploy_min_z": 1e6})})
    ranker, info = fit_ranker(strict, tiny_rd)
    assert info["users_with_positive_candidate"] >= cfg.rank.min_train_users  # it got as far as validation
    assert ranker is None and "rank.deploy_min_z=1000000.0" in info["fallback"]
    assert info["val_gain"]["over"] == info["fallback_order"] and info["val_gain"]["z"] < 1e6


def test_fusion_of_the_ranker_with_the_blend_by_hand():
    from recsys.rank import Ranker, fused_with_blend, user_ranks

    c = cands([("u0", "i2", 5.0, "covisitation", 1, "i1"), ("u0", "i1", 0.9, "two_tower", 1, ""),
               ("u0", "i3", 0.5, "two_tower", 2, ""), ("u1", "i0", 2.0, "covisitation", 1, "i3")])  # fmt: skip
    pairs = wide_candidates(c)  # rows u0-i1, u0-i2, u0-i3, u1-i0; blend 1/21, 1/21, 1/22, 1/21 (rrf_k 20)
    booster = np.array([0.1, 0.3, 0.2, 5.0])
    np.testing.assert_array_equal(user_ranks(pairs["user_id"].to_numpy(), booster), [3, 1, 2, 1])
    fused = fused_with_blend(pairs, booster, Config())  # blend ranks 1, 2 (a tie: row order), 3, 1
    np.testing.assert_allclose(fused, [1 / 23 + 1 / 21, 1 / 21 + 1 / 22, 1 / 22 + 1 / 23, 2 / 21])

    import lightgbm as lgb

    X = np.array([[0.0], [2.0], [1.0], [3.0]])  # a real booster that learns to order by the feature
    model = lgb.train({"objective": "lambdarank", "min_data_in_leaf": 1, "min_data_in_bin": 1, "verbosity": -1},
                      lgb.Dataset(X, [0, 2, 1, 1], group=[3, 1]), num_boost_round=5)  # fmt: skip
    pred = model.predict(X)
    assert pred[1] > pred[2] > pred[0]  # u0: i2, i3, i1, as `booster` above
    np.testing.assert_array_equal(Ranker(model, ["f"]).score(pairs, X, Config()), pred)
    np.testing.assert_allclose(Ranker(model, ["f"], fuse_blend=True).score(pairs, X, Config()), fused)
