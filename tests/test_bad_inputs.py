"""Issue 8: a corpus of bad input, every kind the review found plus non-UTF-8 bytes,
parquet files whose column types conflict, timestamps at 0 and in 2099, empty files and
a 10 MB title. Each bad row ends in quarantine with its reason (or is cleaned, for
catalog text), each bad partition is a clear error with exit code 2 and no traceback,
and raw rows = clean + quarantined."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT

D = dt.date(2026, 11, 22)
Y, Y2 = "2026-11-21", "2026-11-20"
LONG_ID = "u" * 3000


def _good(user: str, item: str = "i1", ts: str = f"{Y}T10:00:00Z", et: str = "view") -> dict:
    return {"user_id": user, "item_id": item, "event_type": et, "ts": ts, "session_id": "s", "value": None}


# (user_id, expected reason or None for clean), written as JSON lines.
JSON_ROWS = [
    (_good("ok1"), None),
    (_good(" ok2 ", item=" i2 "), None),  # surrounding spaces are trimmed, the item matches
    (_good(LONG_ID), "bad_user_id"),  # over the btree limit: stopped every publish
    (_good("nul\x00user"), "bad_user_id"),
    (_good("ok3", item="i\x00x"), "bad_item_id"),
    ({**_good("nan1", et="rate"), "value": "NaN"}, "bad_value"),
    ({**_good("inf1", et="rate"), "value": "Infinity"}, "bad_value"),
    (_good("epoch0", ts="0"), "outside_window"),
    (_good("y2099", ts="2099-01-01T00:00:00Z"), "future_timestamp"),
    (_good("old1", ts="2025-01-01T00:00:00Z"), "outside_window"),  # old event in a recent partition
]


def _write_inputs(root, catalog_dt: str = Y) -> int:
    """The corpus; returns the number of raw event rows written."""
    cat = root / "catalog" / f"dt={catalog_dt}"
    cat.mkdir(parents=True)
    items = [
        {"item_id": "i1", "title": "One", "price": "1.5", "created_at": "2026-01-01"},
        {"item_id": " i1 ", "title": "One again", "price": "2"},  # duplicate after trimming
        {"item_id": "i2", "title": "T" * (10 << 20), "price": "3"},  # a 10 MB title
        {"item_id": "i3", "title": "Nul\x00title", "price": "NaN"},  # NaN price
        {"item_id": "i4", "title": "Inf", "price": "-Infinity"},
        {"item_id": "i5", "title": "From the future", "created_at": "2099-01-01T00:00:00Z"},
        {"item_id": "i" * 3000, "title": "long id"},
        {"item_id": "i6", "title": "Fine"},
    ]
    with open(cat / "part-0.jsonl", "w", encoding="utf-8") as f:
        for r in items:
            f.write(json.dumps(r) + "\n")
    n = 0
    ev = root / "events" / f"dt={Y}"
    ev.mkdir(parents=True)
    with open(ev / "a.jsonl", "w", encoding="utf-8") as f:
        for r, _ in JSON_ROWS:
            f.write(json.dumps(r) + "\n")
            n += 1
    # CSV bound by header name: columns reordered, optional ones absent.
    (ev / "b.csv").write_text(f"ts,event_type,item_id,user_id\n{Y}T11:00:00Z,click,i6,csv1\n")
    # Non-UTF-8 bytes in an id.
    (ev / "c.csv").write_bytes(b"user_id,item_id,event_type,ts\nbad\xff\xfeid,i1,view," + f"{Y}T12:00:00Z\n".encode())
    n += 2
    (ev / "empty.csv").write_bytes(b"")
    (ev / "empty.jsonl").write_bytes(b"")
    # Two parquet files whose ts column types conflict (timestamp vs text).
    ev2 = root / "events" / f"dt={Y2}"
    ev2.mkdir(parents=True)
    t1 = pd.DataFrame({"user_id": ["pq1"], "item_id": ["i1"], "event_type": ["view"],
                       "ts": pd.to_datetime([f"{Y2}T09:00:00Z"]).astype("datetime64[us, UTC]")})  # fmt: skip
    t2 = pd.DataFrame({"user_id": ["pq2"], "item_id": ["i6"], "event_type": ["view"], "ts": [f"{Y2}T09:30:00Z"]})
    pq.write_table(pa.Table.from_pandas(t1, preserve_index=False), ev2 / "a.parquet")
    pq.write_table(pa.Table.from_pandas(t2, preserve_index=False), ev2 / "b.parquet")
    return n + 2


def _cfg(data, work, **events):
    from recsys.config import load_config

    ev = {"max_reject_rate": 1.0, "lookback_days": 30, **events}
    return load_config(overrides={"paths": {"data_root": str(data), "work_root": str(work)},
                                  "spark": {"shuffle_partitions": 2}, "events": ev}, environ={})  # fmt: skip


def test_every_bad_row_is_quarantined_with_its_reason(tmp_path, spark):
    from recsys.pipeline import run_stage
    from recsys.rundir import RunDir

    n_raw = _write_inputs(tmp_path / "in")
    cfg = _cfg(tmp_path / "in", tmp_path / "work")
    info = run_stage("validate", cfg, D)
    rd = RunDir(cfg, D)
    clean = spark.read.parquet(str(rd.path("validated", "events"))).toPandas()
    q = spark.read.parquet(str(rd.path("quarantine", "events"))).toPandas()
    assert len(clean) + len(q) == n_raw == info["events_raw"]
    reasons = {u.strip(): r for u, r in zip(q["user_id"].fillna(""), q["reason"], strict=True)}
    for row, want in JSON_ROWS:
        got = reasons.get(row["user_id"].strip())
        assert got == want, (row["user_id"][:20], got, want)
    assert [r for u, r in reasons.items() if u.startswith("bad")] == ["bad_user_id"]  # the non-UTF-8 id
    assert set(clean["user_id"]) == {"ok1", "ok2", "csv1", "pq1", "pq2"}
    csv_row = clean[clean.user_id == "csv1"].iloc[0]  # bound by header, not position
    assert (csv_row.item_id, csv_row.event_type) == ("i6", "click")
    assert set(clean[clean.user_id == "ok2"].item_id) == {"i2"}

    cat = spark.read.parquet(str(rd.path("validated", "catalog"))).toPandas().set_index("item_id")
    cq = spark.read.parquet(str(rd.path("quarantine", "catalog"))).toPandas()
    assert sorted(cq["reason"]) == ["bad_item_id", "bad_price", "bad_price", "duplicate_item_id"]
    assert sorted(cat.index) == ["i1", "i2", "i5", "i6"]
    assert len(cat.loc["i2", "title"]) == cfg.events.title_max_chars
    assert pd.isna(cat.loc["i5", "created_at"]) and info["catalog_repaired"] == {"future_created_at": 1}
    assert len(cat) + len(cq) == 8


def _cli_validate(data, work, *extra):
    return subprocess.run(
        [sys.executable, "-m", "recsys", "validate", "--date", D.isoformat(), "--data-root", str(data),
         "--work-root", str(work), "--set", "events.lookback_days=30", *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_stale_or_empty_partitions_are_clear_errors(tmp_path):
    """Issue 8, item 9: yesterday's folder with only _SUCCESS, or a catalog of any age,
    passed. Now: exit 2 with one clear line, no traceback."""
    data = tmp_path / "in"
    _write_inputs(data, catalog_dt="2026-10-01")
    res = _cli_validate(data, tmp_path / "w1", "--set", "events.catalog_max_age_days=2")
    assert res.returncode == 2 and "catalog export has not landed" in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    for f in (data / "events" / f"dt={Y}").iterdir():
        f.unlink()
    (data / "events" / f"dt={Y}" / "_SUCCESS").write_text("")
    res = _cli_validate(data, tmp_path / "w2")
    assert res.returncode == 2 and f"dt={Y} holds 0 rows" in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
