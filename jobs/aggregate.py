"""spark-submit entry point for the Spark stages (validate + aggregate).

    spark-submit --master spark://master:7077 jobs/aggregate.py --date 2026-11-22 \
        --config /etc/recsys.yaml [--stage validate|aggregate|both]

The Spark master comes from the config (spark.master) or spark-submit; paths and the
date are arguments, so the same job runs locally and on a cluster.
"""

from __future__ import annotations

import argparse
import sys

from recsys.config import load_config, parse_date, parse_set_overrides
from recsys.pipeline import run_stage


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--date", required=True)
    p.add_argument("--config")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--stage", choices=["validate", "aggregate", "both"], default="both")
    a = p.parse_args(argv)
    cfg = load_config(a.config, parse_set_overrides(a.set))
    date = parse_date(a.date)
    for stage in ["validate", "aggregate"] if a.stage == "both" else [a.stage]:
        run_stage(stage, cfg, date)
    return 0


if __name__ == "__main__":
    sys.exit(main())
