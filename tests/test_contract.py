import datetime as dt
import json

import pytest

from recsys.contract import (
    EVENT_COLUMNS,
    InputError,
    Partition,
    list_partitions,
    read_raw,
    select_catalog_partition,
    select_event_partitions,
)

D = dt.date(2026, 11, 22)


def parts(*days):
    return [Partition(dt.date(2026, 11, d), f"p{d}", ()) for d in days]


def test_event_window_and_missing_partition():
    assert [p.date.day for p in select_event_partitions(parts(10, 19, 20, 21, 22), D, 3)] == [19, 20, 21]
    with pytest.raises(InputError, match="dt=2026-11-21 is missing"):
        select_event_partitions(parts(19, 20), D, 3)
    with pytest.raises(InputError, match="no event partitions"):
        select_event_partitions(parts(1), D, 3)


def test_catalog_newest_not_after_date():
    assert select_catalog_partition(parts(20, 22, 23), D).date.day == 22
    with pytest.raises(InputError):
        select_catalog_partition(parts(23), D)


@pytest.mark.spark
def test_reads_jsonl_csv_parquet_and_keeps_corrupt_lines(spark, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "events"
    (root / "dt=2026-11-20").mkdir(parents=True)
    (root / "dt=2026-11-21").mkdir(parents=True)
    (root / "notapartition").mkdir()
    lines = [json.dumps({"user_id": "u1", "item_id": "i1", "event_type": "view", "ts": 1763632800}), "{oops"]
    (root / "dt=2026-11-20" / "a.jsonl").write_text("\n".join(lines) + "\n")
    (root / "dt=2026-11-20" / "b.csv").write_text("user_id,item_id,event_type,ts\nu2,i2,click,2026-11-20T01:00:00Z\n")
    (root / "dt=2026-11-20" / "_SUCCESS").write_text("")
    pq.write_table(pa.table({"user_id": ["u3"], "item_id": ["i3"], "event_type": ["purchase"],
                             "ts": pa.array([dt.datetime(2026, 11, 21, 5)], pa.timestamp("us", tz="UTC"))}),
                   root / "dt=2026-11-21" / "c.parquet")  # fmt: skip
    found = list_partitions(spark, str(root))
    assert [p.date for p in found] == [dt.date(2026, 11, 20), dt.date(2026, 11, 21)]
    assert [f[1] for f in found[0].files] == ["json", "csv"]
    rows = sorted(read_raw(spark, found, EVENT_COLUMNS).collect(), key=lambda r: (r.user_id or "", r.dt))
    assert [(r.user_id, r.ts, r.dt) for r in rows] == [
        (None, None, "2026-11-20"),
        ("u1", "1763632800", "2026-11-20"),
        ("u2", "2026-11-20T01:00:00Z", "2026-11-20"),
        ("u3", "2026-11-21 05:00:00", "2026-11-21"),
    ]
    assert rows[0]._corrupt == "{oops"


@pytest.mark.spark
def test_parquet_nanosecond_and_epoch_units_parse(spark, tmp_path):
    import pandas as pd

    from recsys.aggregate import parse_ts

    d = tmp_path / "events" / "dt=2026-11-20"
    d.mkdir(parents=True)
    pd.DataFrame({"user_id": ["u1"], "item_id": ["i1"], "event_type": ["view"],
                  "ts": pd.to_datetime(["2026-11-20T10:00:00Z"])}).to_parquet(d / "ns.parquet")  # fmt: skip
    raw = read_raw(spark, list_partitions(spark, str(tmp_path / "events")), EVENT_COLUMNS)
    got = raw.select(parse_ts(raw.ts).alias("t")).collect()[0].t
    assert got == dt.datetime(2026, 11, 20, 10)
    df = spark.createDataFrame([("1763632800",), ("1763632800000",), ("1763632800000000",), ("x",)], "ts string")
    vals = [r.t for r in df.select(parse_ts(df.ts).alias("t")).collect()]
    assert vals[:3] == [dt.datetime(2025, 11, 20, 10)] * 3 and vals[3] is None
