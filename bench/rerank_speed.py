"""Re-rank throughput: the pages of a finished run built with MMR batched over 512 users
at a time (what the rerank stage does) against the same code one user at a time (the
reference: how the stage worked before), in one run; the pages must be identical.

    python bench/quality.py synthetic      # or any run that reached the rerank stage
    python bench/rerank_speed.py --run-dir work/bench/synthetic/work/runs/2026-11-22/main
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from recsys import rerank  # noqa: E402
from recsys.retrieve import load_context  # noqa: E402
from recsys.rundir import RunDir  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--run-dir", required=True, help="runs/<date>/<tag> of a finished run")
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    rd = RunDir.open(a.run_dir)
    cfg = rd.cfg
    ctx = load_context(cfg, rd, "full")
    ranked = pd.read_parquet(rd.path("candidates", "ranked.parquet"))
    by_source = pd.read_parquet(rd.path("candidates", "by_source.parquet"))
    results = {}
    batched = rerank.MMR_CHUNK
    for name, chunk in (("one user at a time (reference)", 1), (f"{batched} users at a time", batched)):
        rerank.MMR_CHUNK = chunk
        best = float("inf")
        for _ in range(a.repeat):
            t = time.perf_counter()
            pages = rerank.build_slates(cfg, ctx, ranked, by_source)
            best = min(best, time.perf_counter() - t)
        results[name] = (best, pages)
    rerank.MMR_CHUNK = batched
    (ref_s, ref_pages), (new_s, new_pages) = results.values()
    print(f"| pages built | users | best of {a.repeat}, s | users/s |\n|---|---|---|---|")
    for name, (s, pages) in results.items():
        print(f"| {name} | {len(pages)} | {s:.2f} | {len(pages) / s:,.0f} |")
    print(f"\nspeed-up {ref_s / new_s:.2f}x; identical pages: {ref_pages == new_pages}")


if __name__ == "__main__":
    main()
