"""Spark (the aggregate stage's own transforms) vs DuckDB computing the same features
from the same validated files, in the same run, on the same cores.

    python bench/spark_vs_duckdb.py --run-dir /tmp/scale100k/work/runs/2026-11-21/main

Both engines read `validated/events` and `validated/catalog`, compute the serving split's
user sequences (runs of one item collapsed, last model.max_history, as the stage keeps), item statistics
(count, users, weighted popularity, trend) and co-visitation (window, top n), and write
each to parquet. Prints seconds per feature and engine, the ratio, and how far the
outputs agree (exact for sequences and statistics; co-visitation pairs whose score
matches within 1e-9, as summation order differs).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402
import pandas as pd  # noqa: E402

from recsys import aggregate as agg  # noqa: E402
from recsys.config import load_config  # noqa: E402
from recsys.spark import get_spark  # noqa: E402


def spark_features(cfg, run_date: dt.date, src: Path, out: Path) -> dict[str, float]:  # type: ignore[no-untyped-def]
    spark = get_spark(cfg.spark, app_name="bench-spark-vs-duckdb")
    clean = spark.read.parquet(str(src / "events"))
    catalog = spark.read.parquet(str(src / "catalog"))
    inter = agg.interactions(clean, cfg.events.weights, cfg.events.min_rating_positive).cache()
    inter.count()  # both engines start from the parsed files: read + cache is timed below
    times = {}
    t = time.time()
    # The stage's own writer (agg._write), so its file layout is what is measured.
    codes = agg.item_codes(catalog).cache()
    agg._write(agg.sequences(inter, run_date, cfg.model.max_history, codes), str(out / "sequences"))
    times["sequences"] = time.time() - t
    t = time.time()
    agg._write(agg.item_stats(inter, catalog, run_date, cfg.retrieve.trending_days), str(out / "item_stats"))
    times["item_stats"] = time.time() - t
    t = time.time()
    seqs = spark.read.parquet(str(out / "sequences"))
    rc = cfg.retrieve
    cov = agg.coded_covisitation(seqs, codes, rc.covis_window, rc.covis_neighbors, rc.covis_backward)
    agg._write(cov, str(out / "covisitation"))
    times["covisitation"] = time.time() - t
    inter.unpersist()
    return times


def duckdb_features(cfg, run_date: dt.date, src: Path, out: Path, threads: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    cases = " ".join(f"WHEN '{k}' THEN CAST({float(v)} AS DOUBLE)" for k, v in sorted(cfg.events.weights.items()))
    cutoff = f"TIMESTAMP '{run_date} 00:00:00'"
    trend = f"TIMESTAMP '{run_date - dt.timedelta(days=cfg.retrieve.trending_days)} 00:00:00'"
    con.execute(f"""
        CREATE TABLE inter AS
        SELECT user_id, item_id, event_type, ts, weight FROM (
          SELECT *, coalesce(CASE event_type {cases} END, 0.0::DOUBLE) AS weight
          FROM read_parquet('{src}/events/*.parquet'))
        WHERE weight > 0 AND (event_type <> 'rate' OR value IS NULL OR value >= {cfg.events.min_rating_positive})
          AND ts < {cutoff}""")
    times = {}
    t = time.time()
    con.execute(f"""
        COPY (
          WITH o AS (SELECT *, lag(item_id) OVER w AS prev FROM inter
                     WINDOW w AS (PARTITION BY user_id ORDER BY ts, item_id, event_type)),
          r AS (SELECT *, sum(CASE WHEN prev IS NULL OR prev <> item_id THEN 1 ELSE 0 END)
                  OVER (PARTITION BY user_id ORDER BY ts, item_id, event_type ROWS UNBOUNDED PRECEDING) AS run
                FROM o),
          runs AS (SELECT user_id, run, first(item_id) AS item_id, min(ts) AS ts,
                          max({{'w': weight, 't': event_type}}).t AS event_type
                   FROM r GROUP BY user_id, run),
          last AS (SELECT *, row_number() OVER (PARTITION BY user_id ORDER BY run DESC) AS rn FROM runs)
          SELECT user_id, list(item_id ORDER BY run) AS items, list(event_type ORDER BY run) AS types,
                 list(ts ORDER BY run) AS ts
          FROM last WHERE rn <= {cfg.model.max_history} GROUP BY user_id
        ) TO '{out}/sequences.parquet' (FORMAT parquet)""")
    times["sequences"] = time.time() - t
    t = time.time()
    con.execute(f"""
        COPY (
          SELECT c.item_id, coalesce(a.n_events, 0) AS n_events, coalesce(a.n_users, 0) AS n_users,
                 coalesce(a.pop_score, 0.0::DOUBLE) AS pop_score, coalesce(a.trend_score, 0.0::DOUBLE) AS trend_score,
                 a.first_event_ts, c.category, c.created_at, c.available
          FROM read_parquet('{src}/catalog/*.parquet') c LEFT JOIN (
            SELECT item_id, count(*) AS n_events, count(DISTINCT user_id) AS n_users, sum(weight) AS pop_score,
                   sum(CASE WHEN ts >= {trend} THEN weight ELSE 0.0::DOUBLE END) AS trend_score, min(ts) AS first_event_ts
            FROM inter GROUP BY item_id) a USING (item_id)
        ) TO '{out}/item_stats.parquet' (FORMAT parquet)""")
    times["item_stats"] = time.time() - t
    t = time.time()
    w, n, back = cfg.retrieve.covis_window, cfg.retrieve.covis_neighbors, float(cfg.retrieve.covis_backward)
    con.execute(f"""
        COPY (
          WITH ex AS (SELECT user_id, unnest(items) AS item, generate_subscripts(items, 1) AS pos
                      FROM read_parquet('{out}/sequences.parquet')),
          fwd AS (SELECT a.item AS item_id, b.item AS neighbor_id, sum(1.0::DOUBLE / (b.pos - a.pos)) AS score
                  FROM ex a JOIN ex b ON a.user_id = b.user_id AND b.pos > a.pos AND b.pos <= a.pos + {w}
                  WHERE a.item <> b.item GROUP BY ALL),
          kept AS (SELECT * FROM fwd QUALIFY row_number() OVER (PARTITION BY item_id ORDER BY score DESC, neighbor_id) <= {n}),
          pairs AS (SELECT item_id, neighbor_id, sum(score) AS score FROM (
                      SELECT * FROM kept UNION ALL
                      SELECT neighbor_id, item_id, score * {back} FROM kept WHERE {back} > 0) GROUP BY ALL)
          SELECT item_id, neighbor_id, score,
                 CAST(row_number() OVER (PARTITION BY item_id ORDER BY score DESC, neighbor_id) AS INTEGER) AS rank
          FROM pairs QUALIFY rank <= {n}
        ) TO '{out}/covisitation.parquet' (FORMAT parquet)""")
    times["covisitation"] = time.time() - t
    return times


def agreement(s: Path, d: Path) -> dict[str, float]:
    ss = pd.read_parquet(s / "sequences").set_index("user_id").sort_index()
    ds = pd.read_parquet(d / "sequences.parquet").set_index("user_id").sort_index()
    seq_eq = len(ss) == len(ds) and all(list(a) == list(b) for a, b in zip(ss["items"], ds["items"], strict=True))
    si = pd.read_parquet(s / "item_stats").set_index("item_id").sort_index()
    di = pd.read_parquet(d / "item_stats.parquet").set_index("item_id").sort_index()
    cols = ["n_events", "n_users", "pop_score", "trend_score"]
    stats_eq = si.index.equals(di.index) and all(((si[c] - di[c]).abs() < 1e-6).all() for c in cols)
    sc = pd.read_parquet(s / "covisitation")
    dc = pd.read_parquet(d / "covisitation.parquet")
    m = sc.merge(dc, on=["item_id", "neighbor_id"], how="outer", suffixes=("_s", "_d"))
    same = ((m["score_s"] - m["score_d"]).abs() < 1e-9).sum()
    return {"sequences_equal": bool(seq_eq), "item_stats_equal": bool(stats_eq),
            "covis_pairs_agree": round(float(same / max(len(m), 1)), 6), "covis_pairs": len(sc)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", type=Path, required=True, help="a run directory with validated/")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--shuffle-partitions", type=int, help="default: the config's spark.shuffle_partitions")
    args = ap.parse_args()
    manifest = json.loads((args.run_dir / "manifest.json").read_text())
    spark_cfg = {"master": f"local[{args.threads}]"}
    if args.shuffle_partitions:
        spark_cfg["shuffle_partitions"] = args.shuffle_partitions
    cfg = load_config(overrides={"spark": spark_cfg}, environ={})
    run_date = dt.date.fromisoformat(manifest["logical_date"])
    src = args.run_dir / "validated"
    work = Path(tempfile.mkdtemp(prefix="bench-sd-"))
    try:
        (work / "spark").mkdir()
        (work / "duckdb").mkdir()
        t_s = spark_features(cfg, run_date, src, work / "spark")
        t_d = duckdb_features(cfg, run_date, src, work / "duckdb", args.threads)
        result = {"events": int(duckdb.sql(f"SELECT count(*) FROM read_parquet('{src}/events/*.parquet')").fetchall()[0][0]),
                  "threads": args.threads, "spark_s": {k: round(v, 1) for k, v in t_s.items()},
                  "duckdb_s": {k: round(v, 1) for k, v in t_d.items()},
                  "ratio": {k: round(t_s[k] / max(t_d[k], 1e-9), 2) for k in t_s},
                  "total_ratio": round(sum(t_s.values()) / max(sum(t_d.values()), 1e-9), 2),
                  **agreement(work / "spark", work / "duckdb")}  # fmt: skip
        print(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
