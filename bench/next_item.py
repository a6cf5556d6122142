"""The outside view of quality: each user's next item, scored from the run's output files.

    python bench/next_item.py movielens            # ../shared/data/ml-latest-small
    python bench/next_item.py movielens-dense      # its 1,700 most-rated movies (MovieLens-100K's size)
    python bench/next_item.py synthetic            # the default synthetic data
    python bench/next_item.py purchases            # a shop of short purchase histories (Amazon-review-like)
    python bench/next_item.py contract --data DIR  # any data set in the input contract

This is how public data sets are scored from outside (README "Quality is also measured
from outside"): every user's last event is removed from the input, the night runs with
`--holdout-days 0 --exclude interacted`, and the removed item is looked up in
- every source alone (candidates/by_source.parquet, in source_rank order),
- the final ranked list (candidates/ranked.parquet, rank order),
- the homepage in reading order (slates/slate_items.parquet, row order).
Metrics are over all users with a removed item (a missing list is a miss), with 95%
bootstrap intervals, and every list's NDCG@10 minus co-visitation's paired over the same
users (its interval is far narrower than two intervals side by side). Prints one markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.config import load_config  # noqa: E402
from recsys.evaluation.metrics import bootstrap_cis, per_user_metrics, summarise  # noqa: E402
from recsys.pipeline import run_pipeline  # noqa: E402
from recsys.rundir import RunDir  # noqa: E402

KS = (10, 20, 50)
PAIRED_WITH = "covisitation"  # every list's NDCG@10 is also given as a paired difference from this source


def leave_last_out(src: Path, out: Path) -> tuple[pd.DataFrame, dt.date]:
    """Copy a contract data root without each user's last event (ts, then item_id);
    every event goes into one partition (the run reads them all). Returns the removed
    (user_id, item_id) pairs and the logical date to run."""
    ev = ds.dataset(src / "events", format="parquet", partitioning="hive").to_table().to_pandas()
    ev = ev.drop(columns=[c for c in ("dt",) if c in ev.columns])
    ev["ts"] = pd.to_datetime(ev["ts"], utc=True)
    ev = ev.sort_values(["user_id", "ts", "item_id"], kind="stable")
    last = ev.groupby("user_id").tail(1)
    keep = ev.drop(index=last.index)
    day = keep["ts"].max().date()
    if out.exists():
        shutil.rmtree(out)
    part = out / "events" / f"dt={day.isoformat()}"
    part.mkdir(parents=True)
    keep["ts"] = keep["ts"].astype("datetime64[us, UTC]")
    pq.write_table(pa.Table.from_pandas(keep, preserve_index=False), part / "part-00000.parquet")
    cats = sorted((src / "catalog").glob("dt=*"))
    # Under the last kept day: the source's snapshot may be dated after it (the day
    # after the removed events), and a run reads the newest snapshot up to its date.
    shutil.copytree(cats[-1], out / "catalog" / f"dt={min(cats[-1].name[3:], day.isoformat())}")
    catalog = ds.dataset(cats[-1], format="parquet").to_table(columns=["item_id"]).column(0).to_pylist()
    last = last[last["item_id"].isin(set(catalog))]  # a target outside the catalog is no one's to find
    return last[["user_id", "item_id"]].reset_index(drop=True), day + dt.timedelta(days=1)


DENSE_ITEMS = 1_700  # MovieLens-100K's catalog (1,682 movies, 943 users, 100k ratings)


def densest(src: Path, out: Path, n_items: int) -> Path:
    """A MovieLens folder with only the n_items most-rated movies (their ratings, tags
    and rows of movies.csv): ml-latest-small's 610 users over 1,700 movies hold 74,545
    of its 100,836 ratings, 44 per movie instead of 10, the density of MovieLens-100K
    and -1M where the issue measured co-visitation far above the two-tower."""
    out.mkdir(parents=True, exist_ok=True)
    r = pd.read_csv(src / "ratings.csv")
    keep = set(r["movieId"].value_counts().sort_index().sort_values(ascending=False, kind="stable").index[:n_items])
    for name in ("ratings.csv", "movies.csv", "tags.csv"):
        if (src / name).is_file():
            df = pd.read_csv(src / name)
            df[df["movieId"].isin(keep)].to_csv(out / name, index=False)
    return out


PURCHASES = {"n_users": 30_000, "n_items": 12_000, "days": 60, "corrupt_rate": 0.0, "bot_users": 0}


def purchases(raw: Path, out: Path, min_count: int = 5, day_resolution: bool = False) -> Path:
    """The synthetic shop as a public review data set looks (Amazon product categories
    in the SASRec split): only add_to_cart and purchase events, as `purchase`, the first
    of each user-item pair, then users and items with at least min_count events kept
    until both hold (5-core). From PURCHASES: 12,761 users, 3,956 items, 9.3 events per
    user. day_resolution floors every ts to its day, as review dates are (ties in a day
    are then ordered by item id, here and in the night)."""
    ev = ds.dataset(raw / "events", format="parquet", partitioning="hive").to_table().to_pandas()
    ev = ev[ev["event_type"].isin(["add_to_cart", "purchase"])].copy()
    ev["ts"] = pd.to_datetime(ev["ts"], utc=True)
    ev = ev.sort_values("ts", kind="stable").drop_duplicates(["user_id", "item_id"])
    while True:
        n = len(ev)
        ev = ev[ev.groupby("user_id")["user_id"].transform("size") >= min_count]
        ev = ev[ev.groupby("item_id")["item_id"].transform("size") >= min_count]
        if len(ev) == n:
            break
    if day_resolution:
        ev["ts"] = ev["ts"].dt.floor("D")
    ev = ev.assign(event_type="purchase", ts=ev["ts"].astype("datetime64[us, UTC]"))
    if out.exists():
        shutil.rmtree(out)
    for day, g in ev.groupby(ev["ts"].dt.strftime("%Y-%m-%d")):
        (out / "events" / f"dt={day}").mkdir(parents=True)
        cols = g[["user_id", "item_id", "event_type", "ts"]]
        pq.write_table(
            pa.Table.from_pandas(cols, preserve_index=False), out / "events" / f"dt={day}" / "part-0.parquet"
        )
    newest = sorted((raw / "catalog").glob("dt=*"))[-1]
    shutil.copytree(newest, out / "catalog" / newest.name)
    return out


def lists_from(df: pd.DataFrame, order: str | None) -> dict[str, list[str]]:
    if order is not None:
        df = df.sort_values(["user_id", order], kind="stable")
    return {u: g["item_id"].tolist() for u, g in df.groupby("user_id", sort=False)}


def score_run(rd: RunDir, targets: dict[str, set[str]], seed: int = 0) -> pd.DataFrame:
    by_source = pd.read_parquet(rd.path("candidates", "by_source.parquet"))
    ranked = pd.read_parquet(rd.path("candidates", "ranked.parquet"))
    slates = pd.read_parquet(rd.path("slates", "slate_items.parquet"))
    methods = {f"source: {s}": lists_from(g, "source_rank") for s, g in by_source.groupby("source")}
    methods["ranked.parquet"] = lists_from(ranked, "rank")
    methods["homepage (slate_items)"] = lists_from(slates, None)
    rows = []
    per = {name: per_user_metrics(lists, targets, KS) for name, lists in methods.items()}
    ref = per.get(f"source: {PAIRED_WITH}")
    for name, per_user in per.items():
        s = summarise(per_user, seed=seed)
        row = {"method": name}
        for m in ("ndcg@10", "recall@10", "mrr@10", "recall@50"):
            row[m] = f"{s[m]:.4f} [{s[m + '_lo']:.3f}, {s[m + '_hi']:.3f}]"
        if ref is not None:
            # Paired over the same users: far narrower than the two intervals side by side.
            d = np.asarray(per_user["ndcg@10"]) - np.asarray(ref["ndcg@10"])  # [users]
            lo, hi = bootstrap_cis(d[:, None], seed=seed)
            row[f"ndcg@10 - {PAIRED_WITH}"] = f"{d.mean():+.4f} [{lo[0]:+.3f}, {hi[0]:+.3f}]"
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("dataset", choices=["movielens", "movielens-dense", "synthetic", "purchases", "contract"])
    p.add_argument("--day-resolution", action="store_true", help="purchases: timestamps floored to the day")
    p.add_argument("--data", help="contract data root (dataset=contract)")
    p.add_argument("--work", default=str(ROOT / "work" / "bench-next"))
    p.add_argument("--set", action="append", default=[], help="config override KEY=VALUE")
    p.add_argument("--from", dest="start", default=None, help="re-run from this stage (the input is kept)")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work = Path(a.work) / a.dataset
    if a.dataset in ("movielens", "movielens-dense"):
        from recsys.data.movielens import import_movielens

        src = work / "source"
        if not (src / "events").is_dir():
            ml = ROOT.parent / "shared" / "data" / "ml-latest-small"
            import_movielens(ml if a.dataset == "movielens" else densest(ml, work / "csv", DENSE_ITEMS), src)
    elif a.dataset == "synthetic":
        from recsys.data.synthetic import SyntheticSpec, generate

        src = work / "source"
        if not (src / "events").is_dir():
            generate(src, SyntheticSpec(end_date=dt.date(2026, 11, 21)))
    elif a.dataset == "purchases":
        from recsys.data.synthetic import SyntheticSpec, generate

        src = work / "source"
        if not (src / "events").is_dir():
            generate(work / "raw", SyntheticSpec(end_date=dt.date(2026, 11, 21), **PURCHASES))
            purchases(work / "raw", src, day_resolution=a.day_resolution)
    else:
        src = Path(a.data)
    if a.start and (work / "targets.parquet").is_file():
        targets_df = pd.read_parquet(work / "targets.parquet")
        date = dt.date.fromisoformat((work / "date.txt").read_text().strip())
    else:
        targets_df, date = leave_last_out(src, work / "input")
        targets_df.to_parquet(work / "targets.parquet", index=False)
        (work / "date.txt").write_text(date.isoformat())
    targets = {u: {i} for u, i in zip(targets_df["user_id"], targets_df["item_id"], strict=True)}
    from recsys.config import parse_set_overrides

    over = parse_set_overrides(a.set)
    base = {
        "paths": {"data_root": str(work / "input"), "work_root": str(work / "work")},
        "evaluate": {"holdout_days": 0},
        "events": {"exclude_policy": "interacted", "lookback_days": 100_000, "bot_max_events_per_day": 1_000_000},
    }
    from recsys.config import _deep_merge

    cfg = load_config(overrides=_deep_merge(base, over), environ={})
    t0 = time.time()
    run_pipeline(cfg, date, start=a.start, stop="rerank")
    secs = time.time() - t0
    table = score_run(RunDir(cfg, date), targets)
    print(f"\n{a.dataset}: {len(targets)} users, next item held out, run {secs:.0f}s\n")
    cols = [c for c in table.columns if c != "method"]
    print("| method | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for _, r in table.iterrows():
        print(f"| {r['method']} | " + " | ".join(str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
