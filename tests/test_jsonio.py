"""Issue 5: every JSON the product writes is strict (no NaN / Infinity tokens)."""

import json
import math

import numpy as np
import pytest

from recsys import jsonio


def test_non_finite_numbers_become_null_everywhere():
    obj = {"a": float("nan"), "b": [1.0, float("inf"), -math.inf], "c": {"d": np.float32("nan"), "e": np.int64(3)},
           "f": np.array([0.5, np.nan]), "g": (np.bool_(True), None)}  # fmt: skip
    text = jsonio.dumps(obj, sort_keys=True)
    assert json.loads(text) == {"a": None, "b": [1.0, None, None], "c": {"d": None, "e": 3},
                                "f": [0.5, None], "g": [True, None]}  # fmt: skip
    # Python's own parser accepts NaN; a strict one (as PostgreSQL's jsonb) must too.
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict token {c}"))


def test_plain_objects_and_walked_objects_give_one_text():
    page = [{"key": "top_picks", "title": "For you", "items": [{"item_id": "i1", "score": 0.5, "reason": "r"}]}]
    assert jsonio.dumps(page, compact=True) == json.dumps(jsonio.strict(page), separators=(",", ":"))
    assert jsonio.dumps(page, compact=True) == (
        '[{"key":"top_picks","title":"For you","items":[{"item_id":"i1","score":0.5,"reason":"r"}]}]'
    )
    # Keys json accepts are written its way whether or not a value needs the walk.
    keys = {True: 1, None: 2, 1.5: 3, 2: 4, "s": 5}
    plain, walked = jsonio.dumps(keys), jsonio.dumps({**keys, "nan": float("nan")})
    assert json.loads(plain) == {"true": 1, "null": 2, "1.5": 3, "2": 4, "s": 5}
    assert json.loads(walked) == {**json.loads(plain), "nan": None}
    assert json.loads(jsonio.dumps({np.int64(7): [np.float64(0.25)], (1, 2): {3}})) == {"7": [0.25], "(1, 2)": [3]}


def test_write_is_atomic_and_strict(tmp_path):
    p = tmp_path / "m.json"
    jsonio.write(p, {"loss": float("nan")})
    assert p.read_text().replace(" ", "").replace("\n", "") == '{"loss":null}'
    assert list(tmp_path.iterdir()) == [p]  # no temp file left behind


def test_run_outputs_hold_no_nan_tokens(tiny_run, tiny_rd):
    """manifest (epoch 0 loss is undefined), metrics, model meta and every page."""
    import pyarrow.parquet as pq

    texts = [tiny_rd.manifest_path.read_text(), tiny_rd.path("metrics.json").read_text(),
             tiny_rd.path("model", "meta.json").read_text()]  # fmt: skip
    texts += pq.read_table(tiny_rd.path("slates", "slates.parquet")).column("sections").to_pylist()
    texts += pq.read_table(tiny_rd.path("slates", "fallback.parquet")).column("sections").to_pylist()
    for t in texts:
        json.loads(t, parse_constant=lambda c: pytest.fail(f"non-strict token {c}"))
    assert tiny_rd.read_manifest()["stages"]["train"]["history"][0]["loss"] is None
