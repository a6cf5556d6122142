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
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import ADMIN, page

from recsys.publish import db


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--users", type=int, default=200_000)
    args = ap.parse_args()
    rows = [(f"u{u:07d}", page("v1", u)) for u in range(args.users)]
    name = f"recsys_copy_{uuid.uuid4().hex[:8]}"
    admin = db.make_engine(ADMIN).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f"CREATE DATABASE {name}")
    engine = db.make_engine(ADMIN.rsplit("/", 1)[0] + "/" + name)
    try:
        with engine.begin() as c:
            db.apply_migrations(c)
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
    finally:
        engine.dispose()
        with admin.connect() as c:
            c.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()
    n = args.users
    print(f"| load | seconds | rows/s | vs raw COPY |\n|---|---|---|---|\n"
          f"| raw COPY, bare table (reference) | {raw_s:.1f} | {n / raw_s:,.0f} | 1.00 |\n"
          f"| load_tables + validate (ours: COPY, primary key, ANALYZE, ATTACH) | {ours_s:.1f} | {n / ours_s:,.0f} "
          f"| {raw_s / ours_s:.2f} |\n\n{size / n:.0f} bytes per user stored (table + primary key)")  # fmt: skip


if __name__ == "__main__":
    main()
