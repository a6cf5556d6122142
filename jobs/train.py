"""GPU worker entry point: train then embed for one date.

    python -m jobs.train --date 2026-11-22 --config /etc/recsys.yaml

Uses CUDA when torch sees it (train.device=auto), the whole encoder trains in bf16 mixed
precision there; on CPU the encoder is frozen and cached (see docs/design.md).
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
    p.add_argument("--no-embed", action="store_true")
    a = p.parse_args(argv)
    cfg = load_config(a.config, parse_set_overrides(a.set))
    date = parse_date(a.date)
    run_stage("train", cfg, date)
    if not a.no_embed:
        run_stage("embed", cfg, date)
    return 0


if __name__ == "__main__":
    sys.exit(main())
