"""Bytes per user in PostgreSQL for a night's real pages, and where they go.

    python bench/page_bytes.py work/runs/2026-11-22/main/slates/slates.parquet [--users 20000]

Loads the run's pages (slates.parquet: user_id, sections JSON text) into a fresh
database three ways, in the same run: the reference layout (the partition key filled
into every row by the COPY, scores at 6 decimals: this product before), the publish
stage's own load (recsys.publish.db.load_tables), and the same pages with each slot
field dropped in turn, to show what each costs as compressed jsonb, and under other
column types and compressions (STORAGE). Prints Markdown tables. The reference keeps the pages' scores as written: give it the slates of a run
made before recsys.rerank.page_score (6 decimals) for the before/after comparison.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import scratch_database

from recsys.publish import db
from recsys.rerank import page_score


def sizes(c, table: str, n: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    heap, total, col = c.exec_driver_sql(
        f"SELECT pg_relation_size('{table}'), pg_total_relation_size('{table}'), "
        f"(SELECT avg(pg_column_size(sections)) FROM {table})"
    ).one()
    return {"heap": heap / n, "total": total / n, "jsonb": float(col), "rows_per_page": n / (heap / 8192)}


def copy(c, table: str, rows: list[tuple[str, str]]) -> None:  # type: ignore[no-untyped-def]
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    buf.seek(0)
    c.connection.driver_connection.cursor().copy_expert(
        f"COPY {table} (user_id, sections) FROM STDIN WITH (FORMAT csv)", buf
    )


def reference(engine, rows: list[tuple[str, str]], key: str) -> None:  # type: ignore[no-untyped-def]
    """The layout before: run_key default at CREATE (so in every row), 6-decimal scores;
    created, loaded and keyed in one transaction as load_tables does."""
    with engine.begin() as c:
        c.exec_driver_sql(f"CREATE TABLE ref (user_id text NOT NULL, sections jsonb NOT NULL, "
                          f"run_key text NOT NULL DEFAULT '{key}')")  # fmt: skip
        copy(c, "ref", [(u, scores(s, lambda x: round(x, 6))) for u, s in rows])
        c.exec_driver_sql("ALTER TABLE ref ADD PRIMARY KEY (user_id)")


def scores(page: str, fn) -> str:  # type: ignore[no-untyped-def]
    p = json.loads(page)
    for sec in p:
        for it in sec["items"]:
            it["score"] = fn(it["score"])
    return json.dumps(p)


def without(page: str, field: str) -> str:
    p = json.loads(page)
    for sec in p:
        for it in sec["items"]:
            it.pop(field, None)
    return json.dumps(p)


def jsonb_size(c, pages: list[str]) -> float:  # type: ignore[no-untyped-def]
    c.exec_driver_sql("DROP TABLE IF EXISTS w")
    c.exec_driver_sql("CREATE TABLE w (user_id text, sections jsonb)")
    copy(c, "w", [(str(i), p) for i, p in enumerate(pages)])
    return float(c.exec_driver_sql("SELECT avg(pg_column_size(sections)) FROM w").scalar_one())


# (label, column type, compression, toast_tuple_target or None): the same pages in each.
STORAGE = [("jsonb, pglz (ours)", "jsonb", "pglz", None), ("jsonb, lz4", "jsonb", "lz4", None),
           ("json (text), pglz", "json", "pglz", None), ("json (text), lz4", "json", "lz4", None),
           ("jsonb, pglz, toast_tuple_target 1200 (pages out of line)", "jsonb", "pglz", 1200)]  # fmt: skip


def storage_sizes(c, rows: list[tuple[str, str]]) -> dict[str, dict[str, float]]:  # type: ignore[no-untyped-def]
    """The pages under each STORAGE layout: created, loaded, keyed, measured, dropped."""
    out = {}
    for label, typ, comp, target in STORAGE:
        c.exec_driver_sql("DROP TABLE IF EXISTS st")
        c.exec_driver_sql(f"CREATE TABLE st (user_id text NOT NULL, sections {typ} COMPRESSION {comp} NOT NULL)")
        if target:
            c.exec_driver_sql(f"ALTER TABLE st SET (toast_tuple_target = {target})")
        copy(c, "st", rows)
        c.exec_driver_sql("ALTER TABLE st ADD PRIMARY KEY (user_id)")
        out[label] = sizes(c, "st", len(rows))
    c.exec_driver_sql("DROP TABLE st")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("slates", type=Path)
    ap.add_argument("--users", type=int, default=20_000, help="pages to load (the first N)")
    args = ap.parse_args()
    t = pq.read_table(args.slates, columns=["user_id", "sections"]).slice(0, args.users)
    rows = list(zip(t.column("user_id").to_pylist(), t.column("sections").to_pylist(), strict=True))
    ours_rows = [(u, scores(s, page_score)) for u, s in rows]
    slots = sum(len(sec["items"]) for _, s in rows[:2000] for sec in json.loads(s)) / min(len(rows), 2000)
    with scratch_database("recsys_bytes") as (engine, _):
        with engine.begin() as c:
            run = db.begin_run(c, dt.date(2026, 11, 22), "main", {}, {})
            db.load_tables(c, run, ours_rows, [("all", ours_rows[0][1])])
        reference(engine, rows, run["run_key"])
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            ours, ref = (sizes(c, t, len(rows)) for t in (run["slates_table"], "ref"))
            sample = [s for _, s in ours_rows[:2000]]
            fields = {f: jsonb_size(c, [without(s, f) for s in sample]) for f in
                      ("score", "reason", "item_id", "source", "anchor")}  # fmt: skip
            whole = jsonb_size(c, sample)
            storage = storage_sizes(c, ours_rows)
    print(f"{len(rows):,} pages of {args.slates}, {slots:.1f} slots per page\n")
    print(
        "| layout | bytes per user (table + key) | heap | rows per 8 KB page | jsonb per page |\n|---|---:|---:|---:|---:|"
    )
    for label, s in (("reference: run_key in every row, scores at 6 decimals", ref),
                     ("ours: db.load_tables, run_key as catalog default, 4-digit scores", ours)):  # fmt: skip
        print(f"| {label} | {s['total']:,.0f} | {s['heap']:,.0f} | {s['rows_per_page']:.2f} | {s['jsonb']:,.0f} |")
    print("\n| slot field dropped (2,000 pages, ours) | jsonb per page | saved |\n|---|---:|---:|")
    print(f"| none | {whole:,.0f} | - |")
    for f, v in fields.items():
        print(f"| {f} | {v:,.0f} | {whole - v:,.0f} |")
    print(
        "\n| `sections` column (ours) | heap B per user | total B per user | rows per 8 KB page |\n|---|---:|---:|---:|"
    )
    for label, s in storage.items():
        print(f"| {label} | {s['heap']:,.0f} | {s['total']:,.0f} | {s['rows_per_page']:.2f} |")


if __name__ == "__main__":
    main()
