"""Hand-checked metric values."""

import math

import numpy as np
import pytest

from recsys.evaluation.metrics import (
    catalog_coverage,
    hit_rate_at_k,
    intra_list_diversity,
    mean_metrics,
    ndcg_at_k,
    recall_at_k,
)


def test_recall_normalised_by_min_targets_k():
    ranked = ["a", "b", "c", "d"]
    assert recall_at_k(ranked, {"b", "d", "z"}, 2) == 0.5  # 1 hit of min(3, 2)
    assert recall_at_k(ranked, {"b", "d", "z"}, 4) == pytest.approx(2 / 3)
    assert recall_at_k(ranked, {"a", "b", "c"}, 2) == 1.0  # perfect list, more targets than k


def test_ndcg_by_hand():
    # hit at rank 2 only: DCG = 1/log2(3); IDCG (1 target) = 1/log2(2) = 1
    assert ndcg_at_k(["x", "t"], {"t"}, 2) == pytest.approx(1 / math.log2(3))
    # hits at ranks 1 and 3 with 2 targets: (1 + 1/2) / (1 + 1/log2(3))
    assert ndcg_at_k(["t1", "x", "t2"], {"t1", "t2"}, 3) == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    assert ndcg_at_k(["t1", "t2"], {"t1", "t2"}, 2) == pytest.approx(1.0)


def test_hit_rate_and_empty_targets():
    assert hit_rate_at_k(["a", "b"], {"b"}, 1) == 0.0
    assert hit_rate_at_k(["a", "b"], {"b"}, 2) == 1.0
    with pytest.raises(ValueError):
        recall_at_k(["a"], set(), 1)


def test_mean_metrics_counts_missing_lists_as_zero():
    m = mean_metrics({"u1": ["a"]}, {"u1": {"a"}, "u2": {"b"}, "u3": set()}, [1])
    assert m["recall@1"] == 0.5  # u2 has no list: a miss; u3 has no targets: skipped
    assert m["users"] == 2.0


def test_coverage_and_diversity():
    assert catalog_coverage({"u": ["a", "b"], "v": ["b", "c"]}, 10, 2) == 0.3
    vec = {"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [1.0, 0.0]}
    assert intra_list_diversity(vec, ["a", "b"], 2) == pytest.approx(1.0)
    assert intra_list_diversity(vec, ["a", "c"], 2) == pytest.approx(0.0)
    assert np.isnan(intra_list_diversity(vec, ["a"], 2))


def test_mrr_and_per_user_and_bootstrap():
    from recsys.evaluation.metrics import bootstrap_ci, mrr_at_k, per_user_metrics, summarise

    assert mrr_at_k(["a", "b", "c"], {"c"}, 3) == pytest.approx(1 / 3)
    assert mrr_at_k(["a", "b", "c"], {"c"}, 2) == 0.0
    pu = per_user_metrics({"u1": ["x", "y"], "u2": ["y"]}, {"u1": {"y"}, "u2": {"z"}, "u3": {"x"}}, [2])
    assert pu["mrr@2"] == [0.5, 0.0, 0.0]  # sorted users; u3 has no list: a miss
    assert pu["ndcg@2"] == [pytest.approx(1 / math.log2(3)), 0.0, 0.0]
    lo, hi = bootstrap_ci([0.0, 1.0] * 50, seed=1)
    assert 0.35 < lo < 0.5 < hi < 0.65
    s = summarise({"m": [1.0, 1.0]})
    assert (s["m"], s["m_lo"], s["m_hi"], s["users"]) == (1.0, 1.0, 1.0, 2.0)


def test_bootstrap_cis_match_the_normal_interval_and_share_resamples():
    from recsys.evaluation.metrics import bootstrap_cis

    # 0/1 values with mean 0.3 over 10,000 users: the interval of the mean is
    # 0.3 +- 1.96 * sqrt(0.3 * 0.7 / 10,000) = 0.3 +- 0.00898.
    x = np.zeros(10_000)
    x[:3000] = 1.0
    cols = np.stack([x, x, np.full(10_000, 0.25)], axis=1)  # [users, 3 metrics]
    lo, hi = bootstrap_cis(cols, seed=3)
    assert lo[0] == pytest.approx(0.3 - 0.00898, abs=0.0015) and hi[0] == pytest.approx(0.3 + 0.00898, abs=0.0015)
    assert (lo[0], hi[0]) == (lo[1], hi[1])  # the same resamples for every metric
    assert lo[2] == pytest.approx(0.25) and hi[2] == pytest.approx(0.25)
    empty_lo, _ = bootstrap_cis(np.zeros((0, 2)))
    assert np.isnan(empty_lo).all()
