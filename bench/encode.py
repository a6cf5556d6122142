"""Item text encoding on CPU: plain fp32 torch vs dynamic int8 quantization (torch.ao,
Linear layers), each with length-sorted and with unsorted batches, on the same texts.

    python bench/encode.py --items 3000

Prints texts/s per variant and how close int8 is to fp32: mean cosine similarity of the
pooled vectors and the overlap of each item's 10 nearest neighbours (what retrieval
uses). ONNX Runtime is not installed in this project and is not measured here.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from recsys.data.synthetic import SyntheticSpec, generate  # noqa: E402
from recsys.features import item_text  # noqa: E402
from recsys.model import encoder as enc  # noqa: E402


def texts_for(n: int, tmp: Path) -> list[str]:
    import pyarrow.dataset as ds

    generate(tmp, SyntheticSpec(n_users=200, n_items=n, days=2, seed=5, corrupt_rate=0.0, bot_users=0))
    cat = ds.dataset(tmp / "catalog", format="parquet", partitioning="hive").to_table().to_pandas()
    return [
        item_text(t, c, b, d) for t, c, b, d in zip(cat.title, cat.category, cat.brand, cat.description, strict=True)
    ][:n]


def timed(model: enc.TextEncoder, texts: list[str], sort: bool, batch: int) -> tuple[np.ndarray, float]:
    t0 = time.time()
    if sort:
        out = enc.encode_texts(model, texts, batch)
    else:
        out = np.zeros((len(texts), model.hidden), dtype=np.float32)
        with torch.no_grad():
            for i in range(0, len(texts), batch):
                out[i : i + batch] = model(model.tokenize(texts[i : i + batch])).float().numpy()
    return out, len(texts) / (time.time() - t0)


def knn_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    def top(x: np.ndarray) -> np.ndarray:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        s = x @ x.T
        np.fill_diagonal(s, -np.inf)
        return np.argsort(-s, axis=1)[:, :k]

    ta, tb = top(a), top(b)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(ta, tb, strict=True)]))


def main() -> None:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--max-len", type=int, default=64)
    args = ap.parse_args()
    texts = texts_for(args.items, Path(tempfile.mkdtemp()))
    model = enc.TextEncoder(None, 0, args.max_len).eval()
    fp32_sorted, r1 = timed(model, texts, True, args.batch)
    _, r2 = timed(model, texts, False, args.batch)
    q = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    int8_sorted, r3 = timed(q, texts, True, args.batch)
    cos = np.sum(fp32_sorted * int8_sorted, axis=1) / (
        np.linalg.norm(fp32_sorted, axis=1) * np.linalg.norm(int8_sorted, axis=1)
    )
    print(f"texts {len(texts)}, max_len {args.max_len}, batch {args.batch}, torch threads {torch.get_num_threads()}")
    print(f"| fp32, length-sorted batches | {r1:.0f} texts/s | 1.00x |")
    print(f"| fp32, unsorted batches | {r2:.0f} texts/s | {r2 / r1:.2f}x |")
    print(f"| int8 dynamic, length-sorted | {r3:.0f} texts/s | {r3 / r1:.2f}x |")
    print(f"int8 vs fp32: mean cosine {cos.mean():.4f} (min {cos.min():.4f}); "
          f"10-NN overlap {knn_overlap(fp32_sorted, int8_sorted):.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
