"""The run report: its numbers on hand-computed examples, and the page of a real run
(self-contained, plots present, honest about what was not measured)."""

import re

import numpy as np
import pandas as pd
import pytest

from recsys.evaluation.report import decile_shares, gini, section_fill


def test_gini_hand_computed():
    assert gini(np.array([5, 5, 5, 5])) == 0.0
    # one item takes every slot among 4: (2*4-4-1)*8 / (4*8) = 3/4
    assert gini(np.array([0, 0, 0, 8])) == pytest.approx(0.75)
    # [1, 3]: (-1*1 + 1*3) / (2*4) = 0.25
    assert gini(np.array([3, 1])) == pytest.approx(0.25)
    assert gini(np.array([0, 0])) == 0.0


def test_decile_shares_count_slots_by_popularity_decile():
    pop = pd.Series(np.arange(20, dtype=float), index=[f"i{k}" for k in range(20)])  # i19 most popular
    shares = decile_shares(np.array(["i19", "i18", "i0", "i19", "unknown"]), pop)
    # i18, i19 are decile 10 (3 slots), i0 is decile 1 (1 slot); unknown items are not counted
    assert shares[9] == pytest.approx(0.75) and shares[0] == pytest.approx(0.25) and shares.sum() == pytest.approx(1)


def test_section_fill():
    slots = pd.DataFrame({"user_id": ["a", "a", "a", "b"], "section": ["top", "top", "new", "top"]})
    fill = section_fill(slots, pages=2, sizes={"top": 2, "new": 4, "discover": 3})
    assert fill == {
        "top": {"pages_with_section": 1.0, "slots_filled": 0.75},
        "new": {"pages_with_section": 0.5, "slots_filled": 0.125},
        "discover": {"pages_with_section": 0.0, "slots_filled": 0.0},
    }


def test_report_of_a_real_run_is_self_contained(tiny_rd):
    page = tiny_rd.path("report.html").read_text()
    for fig in ("plot-ndcg", "plot-beyond", "plot-deciles", "plot-stages", "plot-quarantine"):
        assert re.search(rf"<figure id='{fig}'><svg", page), fig
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page), "the report must need no network"
    assert "Gate: <span class='pass'>PASSED" in page or "Gate: <span class='fail'>FAILED" in page
    assert "Gini of slots" in page and "Section fill rates" in page
