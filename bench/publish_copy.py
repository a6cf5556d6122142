"""Publish load vs one raw COPY of the same rows, same server, same run.

    python bench/publish_copy.py --users 200000

Reference: psycopg2 COPY of a pre-built CSV buffer into a bare table (no key, no
statistics). Ours: recsys.publish.db.load_tables (CSV written while streaming rows,
COPY in 8 MB chunks, then primary key, ANALYZE and ATTACH as a partition) plus
validate_loaded. Prints rows/s of each, the ratio, and bytes per user stored.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import page, scratch_database

from recsys.publish import db


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--parts", type=int, default=4, help="shard parts for the parallel load")
    ap.add_argument("--connections", type=int, default=2)
    args = ap.parse_args()
    rows = [(f"u{u:07d}", page("v1", u)) for u in range(args.users)]
    with scratch_database("recsys_copy") as (engine, _):
        # Reference: one raw COPY of the same rows (CSV built before the clock starts).
        buf = io.StringIO()
        csv.writer(buf).writerows(rows)
        with engine.begin() as c:
            c.exec_driver_sql("CREATE TABLE raw_copy (user_id text NOT NULL, sections jsonb NOT NULL)")
            cur = c.connection.driver_connection.cursor()
            buf.seek(0)
            t0 = time.time()
            cur.copy_expert("COPY raw_copy (user_id, sections) FROM STDIN WITH (FORMAT csv)", buf)
            raw_s = time.time() - t0
        t0 = time.time()
        with engine.begin() as c:
            run = db.begin_run(c, dt.date(2026, 11, 22), "main", {}, {})
            sent = db.load_tables(c, run, rows, [("all", page("v1", -1))])
            db.validate_loaded(c, run, sent, 0.0)
        ours_s = time.time() - t0
        with engine.connect() as c:
            size = c.exec_driver_sql(f"SELECT pg_total_relation_size('{run['slates_table']}')").scalar_one()
        par_s = parallel_load(engine, rows, args.parts, args.connections)
    n = args.users
    print(f"| load | seconds | rows/s | vs raw COPY |\n|---|---|---|---|\n"
          f"| raw COPY, bare table (reference) | {raw_s:.1f} | {n / raw_s:,.0f} | 1.00 |\n"
          f"| load_tables + validate (ours: COPY, primary key, ANALYZE, ATTACH) | {ours_s:.1f} | {n / ours_s:,.0f} "
          f"| {raw_s / ours_s:.2f} |\n"
          f"| parallel load ({args.parts} shard parts on {args.connections} connections, then key + ATTACH) "
          f"| {par_s:.1f} | {n / par_s:,.0f} | {raw_s / par_s:.2f} |\n\n"
          f"{size / n:.0f} bytes per user stored (table + primary key)")  # fmt: skip


def parallel_load(engine, rows: list[tuple[str, str]], parts: int, connections: int) -> float:  # type: ignore[no-untyped-def]
    """The publish stage's parallel path (recsys.publish.publish._load_parallel) over the
    same rows written as shard part files (untimed)."""
    import tempfile
    import types

    import pandas as pd

    from recsys import shards
    from recsys.config import load_config
    from recsys.publish.publish import _load_parallel

    tmp = Path(tempfile.mkdtemp())
    (tmp / "slates.parquet").mkdir()
    df = pd.DataFrame(rows, columns=["user_id", "sections"])
    part = shards.shard_of(df["user_id"], parts)
    for i in range(parts):
        df[part == i].to_parquet(tmp / "slates.parquet" / f"part-{i:05d}.parquet", index=False)
    pd.DataFrame({"segment": ["all"], "sections": [page("v1", -1)]}).to_parquet(tmp / "fallback.parquet")
    cfg = load_config(overrides={"publish": {"min_users_ratio_vs_previous": 0.0}}, environ={})
    rd = types.SimpleNamespace(date=dt.date(2026, 11, 23), run_id="main")
    t0 = time.time()
    _load_parallel(engine, cfg, rd, {}, {}, tmp / "slates.parquet", tmp / "fallback.parquet",  # type: ignore[arg-type]
                   {"users": len(rows), "segments": 1}, connections)  # fmt: skip
    return time.time() - t0


if __name__ == "__main__":
    main()
