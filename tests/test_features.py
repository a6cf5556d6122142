import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.features import load_sequences, positions_in


def test_positions_in_finds_each_value_and_minus_one_for_absent_or_null():
    index = pd.Index(["b", "a", "d"])
    for typ in (pa.string(), pa.large_string()):
        got = positions_in(pa.array(["a", "x", None, "d", "a", "b"], type=typ), index)
        np.testing.assert_array_equal(got, [1, -1, -1, 2, 1, 0])
        assert got.dtype == np.int64
    assert len(positions_in(pa.array([], type=pa.string()), index)) == 0


def test_load_sequences_by_hand(tmp_path):
    t0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    at = [t0 + dt.timedelta(seconds=s) for s in (0, 60, 120)]
    pq.write_table(pa.table({
        "user_id": ["u2", "u1"],
        "items": [["i3", "gone", "i1"], ["i2"]],  # "gone" left the catalog
        "types": [["view", "view", "purchase"], ["odd"]],  # "odd" is no known type
        "ts": [at, at[:1]],
    }), tmp_path / "seq.parquet")  # fmt: skip
    s = load_sequences(tmp_path / "seq.parquet", pd.Index(["i1", "i2", "i3"]), ["view", "purchase"])
    assert s.user_ids.tolist() == ["u1", "u2"]  # sorted by user
    np.testing.assert_array_equal(s.offsets, [0, 1, 3])  # u2's unknown item dropped
    np.testing.assert_array_equal(s.items, [1, 2, 0])
    np.testing.assert_array_equal(s.types, [0, 1, 2])  # type index + 1; 0 = unknown
    base = int(t0.timestamp())
    np.testing.assert_array_equal(s.ts, [base, base, base + 120])
