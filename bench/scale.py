"""The whole night at a given size: seconds, rows/s and peak memory per stage.

    python bench/scale.py --users 100000 --items 100000 --events-per-user 50 \
        --out /tmp/scale100k [--set train.time_budget_s=600] [--nights 2]

Generates synthetic data in the input contract (two days more than the first night
reads: night 2's events, and night 2's own catalog with that day's new items), then runs every stage of night 1 (logical date D: empty caches) and, with
--nights 2, of night 2 (D + 1: the text cache is warm, the items created on the last
day are new), each stage as its own process (`python -m recsys <stage>`), as Airflow
runs them. Peak RSS is sampled every 0.2 s over the stage's whole process tree (the
Spark JVM and shard workers included). Writes <out>/scale.json and prints a markdown
table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.pipeline import STAGES  # noqa: E402

# What each stage's info calls its row count (rows/s in the table).
ROWS = {
    "validate": "events_clean",
    "aggregate": "full_users",
    "train": "users",
    "embed": "items",
    "retrieve": "candidates",
    "rank": "ranked_rows",
    "rerank": "users",
    "evaluate": "users_evaluated",
    "publish": "users",
}


def tree_rss(p: psutil.Process) -> int:
    total = 0
    for q in [p, *p.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += q.memory_info().rss
    return total


def run_stage(stage: str, date: dt.date, args: argparse.Namespace, env: dict[str, str]) -> dict:
    cmd = [sys.executable, "-m", "recsys", stage, "--date", date.isoformat(), "--data-root", str(args.out / "data"),
           "--work-root", str(args.out / "work"), "--holdout-days", str(args.holdout_days)]  # fmt: skip
    if args.database_url:
        cmd += ["--database-url", args.database_url]
    for s in args.set:
        cmd += ["--set", s]
    log = open(args.out / f"{date}_{stage}.log", "w")  # noqa: SIM115 - closed below
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(ps))
        time.sleep(0.2)
    log.close()
    secs = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{stage} failed (exit {proc.returncode}); see {args.out}/{date}_{stage}.log")
    m = json.loads((args.out / "work" / "runs" / date.isoformat() / "main" / "manifest.json").read_text())
    info = m["stages"][stage]
    rows = info.get(ROWS[stage]) or 0
    return {"stage": stage, "seconds": round(secs, 1), "rows": rows, "rows_per_s": round(rows / secs, 1),
            "peak_rss_gib": round(peak / 2**30, 2), "info": info}  # fmt: skip


def generate(args: argparse.Namespace, end: dt.date) -> float:
    # One day more than the events night 1 reads: night 2 reads that day, and the
    # catalog partition of night 2's own date holds the items created on it (new texts
    # for the warm cache), whose events neither night reads.
    days = max(2, round(args.events_per_user / args.events_per_user_day)) + 1
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "recsys", "generate", "--out", str(args.out / "data"), "--users",
                    str(args.users), "--items", str(args.items), "--days", str(days), "--end-date", end.isoformat()],
                   check=True, cwd=ROOT)  # fmt: skip
    return time.time() - t0


def warm_text_cache(date: dt.date, args: argparse.Namespace, env: dict[str, str]) -> dict:
    """Night 1 as night 2 inherits it, in minutes instead of hours: only the text cache."""
    cmd = [sys.executable, "bench/warm_text_cache.py", "--date", date.isoformat(), "--data-root",
           str(args.out / "data"), "--work-root", str(args.out / "work")] + [x for s in args.set for x in ("--set", s)]  # fmt: skip
    with open(args.out / f"{date}_text_cache.log", "w") as log:
        out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, env=env, cwd=ROOT, check=True, text=True)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"night 1 text cache only: {info}", flush=True)
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--events-per-user", type=float, default=50)
    ap.add_argument("--events-per-user-day", type=float, default=1.5, help="the generator's rate (measured)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--date", default="2026-11-22", help="night 1's logical date")
    ap.add_argument("--nights", type=int, default=2, choices=[1, 2])
    ap.add_argument("--holdout-days", type=int, default=1)
    ap.add_argument("--database-url", help="default: SQLite in the work root")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--night1", choices=["full", "cache"], default="full",
                    help="cache: night 1 only fills the text cache from its catalog (bench/warm_text_cache.py), "
                    "so night 2 is measured without a whole first night")  # fmt: skip
    ap.add_argument("--skip-generate", action="store_true")
    ap.add_argument("--resume", action="store_true", help="keep the stages <out>/scale.json already holds")
    ap.add_argument(
        "--table", action="store_true", help="print <out>/scale.json's table (a partial night too), run nothing"
    )
    args = ap.parse_args()
    if args.table:
        print(markdown(json.loads((args.out / "scale.json").read_text())))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    d1 = dt.date.fromisoformat(args.date)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "SPARK_LOCAL_IP": "127.0.0.1",
           "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}  # fmt: skip
    # Data through d1: night 1 (logical date d1 - 1) reads the events before it, night 2
    # (d1) one day more and the catalog of d1 (that day's new items).
    saved = args.out / "scale.json"
    if args.resume and saved.is_file():
        result = json.loads(saved.read_text())  # stages already measured are kept
    else:
        gen_s = 0.0 if args.skip_generate else generate(args, d1)
        result = {"users": args.users, "items": args.items, "generate_s": round(gen_s, 1), "set": args.set,
                  "cores": os.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2**30, 1), "nights": []}  # fmt: skip
    nights = [d1 - dt.timedelta(days=1), d1][: args.nights]
    for n, date in enumerate(nights, 1):
        if len(result["nights"]) < n:
            result["nights"].append({"date": date.isoformat(), "stages": []})
        night = result["nights"][n - 1]
        if n == 1 and args.night1 == "cache" and args.nights == 2:
            if "text_cache" not in night:
                night["text_cache"] = warm_text_cache(date, args, env)
            saved.write_text(json.dumps(result, indent=1, default=str))
            continue
        for stage in STAGES[len(night["stages"]) :]:
            r = run_stage(stage, date, args, env)
            night["stages"].append(r)
            print(f"night {n} {stage:<9} {r['seconds']:>8.1f} s  {r['rows_per_s']:>10.1f} rows/s  "
                  f"{r['peak_rss_gib']:.2f} GiB", flush=True)  # fmt: skip
            night["total_s"] = round(sum(r["seconds"] for r in night["stages"]), 1)
            night["peak_rss_gib"] = max(r["peak_rss_gib"] for r in night["stages"])
            saved.write_text(json.dumps(result, indent=1, default=str))  # after every stage: --resume
    print(markdown(result))


def markdown(result: dict) -> str:
    lines = [f"{result['users']:,} users x {result['items']:,} items ({result['cores']} cores, "
             f"{result['ram_gib']} GiB), settings {result['set'] or 'defaults'}; generate {result['generate_s']} s", "",
             "| stage | " + " | ".join(f"night {i + 1} s | rows/s | peak GiB" for i in range(len(result["nights"]))) + " |",
             "|---|" + "---:|---:|---:|" * len(result["nights"])]  # fmt: skip
    for j, stage in enumerate(STAGES):
        cells = []
        for night in result["nights"]:
            if j >= len(night["stages"]):  # a night stopped (or still running) before this stage
                cells += ["-", "-", "-"]
                continue
            r = night["stages"][j]
            cells += [f"{r['seconds']:.1f}", f"{r['rows_per_s']:,.0f}", f"{r['peak_rss_gib']:.2f}"]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    tot = []
    for night in result["nights"]:
        if "text_cache" in night:
            tc = night["text_cache"]
            tot += [f"text cache only ({tc['texts']:,} texts, {tc['seconds']:.0f} s)", "", "-"]
            continue
        whole = len(night["stages"]) == len(STAGES)
        label = f"**{night['total_s']:.0f}**" if whole else f"{night['total_s']:.0f} ({len(night['stages'])} stages)"
        tot += [label, "", f"**{night['peak_rss_gib']:.2f}**"]
    lines.append("| whole night | " + " | ".join(tot) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
