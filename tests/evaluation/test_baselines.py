"""In-run baselines on a hand-made context: last-item co-occurrence and EASE."""

import numpy as np
import pandas as pd
import pytest

from recsys.config import Config
from recsys.evaluation.evaluate import ease, last_item_cooc
from recsys.features import Catalog, Sequences
from recsys.retrieve import Context
from tests.test_rank import CUTOFF, tiny_context


def test_last_item_cooc_follows_the_last_item_and_the_exclusions():
    ctx = tiny_context()  # u0: i0, i1, i0; co-visitation i0 -> i2 (3.0), i0 -> i3 (1.0)
    assert last_item_cooc(ctx, ["u0"], 5) == {"u0": ["i2", "i3"]}
    ctx.excluded = {"u0": {2}}
    assert last_item_cooc(ctx, ["u0"], 5) == {"u0": ["i3"]}
    # The history is skipped only where the exclusion policy says so, as for every
    # method: i1 follows i0 now and u0 saw i1, but nothing excludes it.
    ctx.covis[0] = (np.array([1, 3]), np.array([3.0, 1.0]))
    assert last_item_cooc(ctx, ["u0"], 5) == {"u0": ["i1", "i3"]}


def test_ease_recommends_what_co_occurs():
    """Users who have a also have b; c goes with d. A user with only a gets b first."""
    ids = np.array(["a", "b", "c", "d"], dtype=object)
    hist = {"u1": [0, 1], "u2": [0, 1], "u3": [0, 1], "u4": [2, 3], "u5": [2, 3], "q": [0]}
    users = sorted(hist)
    lens = [len(hist[u]) for u in users]
    seqs = Sequences(np.array(users, dtype=object), np.r_[0, np.cumsum(lens)],
                     np.concatenate([hist[u] for u in users]), np.ones(sum(lens), int), np.zeros(sum(lens), int))  # fmt: skip
    cat = Catalog(ids=ids, texts=list(ids), category=np.full(4, "", dtype=object), available=np.ones(4, bool),
                  created_at=np.full(4, np.datetime64("NaT"), dtype="datetime64[us]"), title=ids.copy(),
                  brand=np.full(4, "", dtype=object), price=np.full(4, np.nan))  # fmt: skip
    ctx = Context(cfg=Config(), cutoff=CUTOFF, catalog=cat, seqs=seqs, user_row={u: i for i, u in enumerate(users)},
                  item_stats=pd.DataFrame({"n_events": [4, 3, 2, 2]}), covis={}, excluded={})  # fmt: skip
    got = ease(ctx, ["q"], 4, lam=1.0, max_items=10)
    # a's own score is B[a, a] = 0: shown (last, after b) unless the policy excludes it
    assert got is not None and got["q"][:2] == ["b", "a"]
    ctx.excluded = {"q": {0}}
    got = ease(ctx, ["q"], 3, lam=1.0, max_items=10)
    assert got is not None and got["q"][0] == "b" and "a" not in got["q"]
    assert ease(ctx, ["q"], 3, lam=1.0, max_items=3) is None  # 4 items > max_items: skipped


@pytest.mark.slow
def test_evaluation_context_of_the_evaluated_users_gives_the_same_lists(tiny_run):
    """Evaluate loads only the users with held-out events (memory bounded by them, not
    by the shop); every method's lists, EASE's included (its item matrix still learns
    from every user), equal those from the whole-shop context."""
    from recsys.evaluation.evaluate import candidate_users, holdout_targets, method_lists
    from recsys.retrieve import load_context
    from recsys.rundir import RunDir
    from tests.conftest import RUN_DATE

    cfg, _ = tiny_run
    rd = RunDir(cfg, RUN_DATE)
    full = load_context(cfg, rd, "train")
    part = load_context(cfg, rd, "train", users=candidate_users(cfg, rd))
    assert len(part.user_row) < len(full.user_row)
    targets = holdout_targets(cfg, rd, full)
    assert holdout_targets(cfg, rd, part) == targets
    users = sorted(targets)
    a, b = method_lists(cfg, rd, full, users), method_lists(cfg, rd, part, users)
    assert "ease" in a and a.keys() == b.keys()
    for name in a:
        assert a[name] == b[name], name


def test_lists_orders_each_user_by_rank_ties_in_row_order():
    from recsys.evaluation.evaluate import _lists

    df = pd.DataFrame({"user_id": ["b", "a", "b", "a", "a"], "item_id": ["x", "p", "y", "q", "r"],
                       "rank": [2, 3, 1, 1, 3]})  # fmt: skip
    out = _lists(df, "rank")
    assert list(out) == ["a", "b"]  # users sorted
    assert out == {"a": ["q", "p", "r"], "b": ["y", "x"]}  # p before r: equal rank, row order
    assert _lists(df.iloc[:0], "rank") == {}
