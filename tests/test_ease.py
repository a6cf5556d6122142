"""EASE by hand (recsys/ease.py) and the item_item source that reads it."""

import numpy as np
import pytest
from scipy import sparse

from recsys import ease
from recsys.features import Sequences


def seqs_of(histories: list[list[int]]) -> Sequences:
    lens = [len(h) for h in histories]
    flat = np.array([i for h in histories for i in h], dtype=np.int64)
    return Sequences(user_ids=np.array([f"u{j}" for j in range(len(histories))], dtype=object),
                     offsets=np.r_[0, np.cumsum(lens)].astype(np.int64), items=flat,
                     types=np.ones(len(flat), np.int64), ts=np.arange(len(flat), dtype=np.int64))  # fmt: skip


def test_fit_by_hand():
    """X = [[1,1,0],[1,1,0],[0,1,1]] (user 0 has item 0 twice: counts once), lambda 1:
    G = X'X + I = [[3,2,0],[2,4,1],[0,1,2]], det 13, P = G^-1 = [[7,-4,2],[-4,6,-3],
    [2,-3,8]] / 13, B_ij = -P_ij / P_jj off the diagonal."""
    items, B = ease.fit(seqs_of([[0, 1, 0], [1, 0], [2, 1]]), n_all=4, lam=1.0, max_items=10)
    assert items.tolist() == [0, 1, 2]  # item 3 has no event: no column
    want = np.array([[0, 4 / 6, -2 / 8], [4 / 7, 0, 3 / 8], [-2 / 7, 3 / 6, 0]])
    np.testing.assert_allclose(B, want, rtol=1e-5)
    assert ease.fit(seqs_of([[0, 1], [2]]), n_all=4, lam=1.0, max_items=2) is None  # 3 items > 2


def test_sparsify_keeps_the_largest_magnitudes_per_row_over_catalog_rows():
    items, B = np.array([1, 3, 4]), np.array([[0, 0.6, -0.8], [0.5, 0, 0.1], [-0.2, 0.3, 0]], dtype=np.float32)
    S = ease.sparsify(items, B, n_neighbors=1, n_all=5).toarray()
    want = np.zeros((5, 5), dtype=np.float32)
    want[1, 4], want[3, 1], want[4, 3] = -0.8, 0.5, 0.3  # negatives count by their size
    np.testing.assert_array_equal(S, want)
    assert ease.sparsify(items, B, n_neighbors=5, n_all=5).nnz == 6  # at most M - 1 per row


def test_save_and_load_follow_the_item_ids(tmp_path):
    m = sparse.csr_matrix((np.array([0.5, -0.25], np.float32), (np.array([0, 1]), np.array([2, 0]))), shape=(3, 3))
    ease.save(tmp_path / "b.npz", m, np.array(["a", "b", "c"]))
    # tonight's catalog: "b" left, "d" arrived, order changed
    got = ease.load(tmp_path / "b.npz", np.array(["c", "d", "a"])).toarray()
    want = np.zeros((3, 3), dtype=np.float32)
    want[2, 0] = 0.5  # a -> c; b's row is gone
    np.testing.assert_array_equal(got, want)


def test_item_item_source_sums_the_rows_of_the_whole_history():
    """tiny_context: u0's history is i0, i1, i0. Scores = B[i0] + B[i1]: i2 0.5 + 0.25,
    i0 0.3 (nothing excludes it in this context), i3 0.4 - 0.5 < 0: not a candidate."""
    from recsys.retrieve import ItemItemSource
    from tests.test_rank import tiny_context

    ctx = tiny_context()
    r, c = np.array([0, 1, 0, 1, 1]), np.array([2, 2, 3, 3, 0])
    ctx.item_item = sparse.csr_matrix((np.array([0.5, 0.25, 0.4, -0.5, 0.3]), (r, c)), shape=(4, 4))
    df = ItemItemSource(ctx).generate(["u0", "nobody"], k=5)
    assert df["item_id"].tolist() == ["i2", "i0"] and df["source_rank"].tolist() == [1, 2]
    assert df["score"].tolist() == pytest.approx([0.75, 0.3])
    ctx.excluded = {"u0": {0}}
    assert ItemItemSource(ctx).generate(["u0"], k=5)["item_id"].tolist() == ["i2"]
    ctx.item_item = None  # catalog too large tonight: the source is empty, not an error
    assert ItemItemSource(ctx).generate(["u0"], k=5).empty


def test_top_m_columns_breaks_ties_by_column_whatever_m():
    from recsys.retrieve import top_m_columns

    S = np.array([[0.5, 1.0, 0.5, 0.5, -np.inf], [-np.inf, -np.inf, 2.0, -np.inf, 1.0]])
    assert top_m_columns(S, 2).tolist() == [[0, 1], [2, 4]]
    assert top_m_columns(S, 3).tolist() == [[0, 1, 2], [0, 2, 4]]  # a tie at -inf: the lower column
    assert top_m_columns(S, 5).tolist() == [[0, 1, 2, 3, 4]] * 2
