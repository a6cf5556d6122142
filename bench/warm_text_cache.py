"""Fill the text cache from one night's catalog: the state a night inherits from the one before.

    python bench/warm_text_cache.py --date 2026-11-21 --data-root /tmp/scale1m/data \
        --work-root /tmp/scale1m/work

`bench/scale.py --night1 cache` runs this instead of a whole first night, so the night
after can be measured without the first one (at 1M users that night alone takes about
two hours, most of a session). The catalog is validated exactly as `validate` does it
(`recsys.aggregate.catalog_for`), its texts built as `train` builds them
(`recsys.features.load_catalog`), and encoded into the same `TextStore` train and embed
read. What night 2 still lacks is a model to warm-start from: training starts from the
pretrained encoder, under the same time budget.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.config import load_config, parse_set_overrides  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--date", required=True, help="the night whose catalog fills the cache")
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--work-root", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    over = parse_set_overrides(args.set)
    over.setdefault("paths", {}).update(data_root=args.data_root, work_root=args.work_root)
    cfg = load_config(None, over)

    from recsys.aggregate import catalog_for
    from recsys.device import torch_device
    from recsys.features import load_catalog
    from recsys.model.encoder import TextEncoder, TextStore
    from recsys.model.train import encoder_layers_to_train
    from recsys.spark import get_spark

    t0 = time.time()
    spark = get_spark(cfg.spark, app_name="warm-text-cache")
    _, clean, _ = catalog_for(spark, cfg, dt.date.fromisoformat(args.date))
    with tempfile.TemporaryDirectory() as tmp:
        clean.coalesce(1).write.parquet(f"{tmp}/catalog")
        catalog = load_catalog(Path(tmp) / "catalog")
    spark.stop()
    device = torch_device(cfg.train.device)
    enc = TextEncoder(cfg.model.encoder_path, encoder_layers_to_train(cfg, device), cfg.model.max_text_len)
    if enc.n_train > 0:
        raise SystemExit("encoder layers are trained on this device: their text vectors are not kept across nights")
    t = time.time()
    TextStore(cfg.cache_dir() / "text", enc).encode(enc, catalog.texts)
    print(json.dumps({"texts": len(catalog.texts), "encode_s": round(time.time() - t, 1),
                      "seconds": round(time.time() - t0, 1)}))  # fmt: skip


if __name__ == "__main__":
    main()
