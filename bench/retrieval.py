"""Retrieval throughput: our index (faiss, flat or IVF) vs a brute-force reference
(numpy matmul + argpartition) on the same random unit vectors, in one run.

    python bench/retrieval.py --items 100000 --queries 20000 --dim 65 --k 100
Prints queries/s of each and the ratio; IVF also reports recall@k against exact.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from recsys.config import RetrieveConfig
from recsys.retrieve import FaissIndex, TorchIndex


def brute(items: np.ndarray, q: np.ndarray, k: int, batch: int = 2048) -> np.ndarray:
    out = []
    for i in range(0, len(q), batch):
        s = q[i : i + batch] @ items.T  # [b, N]
        part = np.argpartition(-s, k, axis=1)[:, :k]
        order = np.take_along_axis(s, part, 1).argsort(axis=1)[:, ::-1]
        out.append(np.take_along_axis(part, order, 1))
    return np.concatenate(out)


def timed(fn):  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    r = fn()
    return r, time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=20_000)
    p.add_argument("--dim", type=int, default=65)  # 64 + the bias dimension
    p.add_argument("--k", type=int, default=100)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    items = rng.normal(size=(a.items, a.dim)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    q = rng.normal(size=(a.queries, a.dim)).astype(np.float32)
    ref, t_ref = timed(lambda: brute(items, q, a.k))
    flat = FaissIndex(items, RetrieveConfig(index="flat"))
    (_, r_flat), t_flat = timed(lambda: flat.search(q, a.k))
    torch_idx = TorchIndex(items, "cpu")
    (_, r_torch), t_torch = timed(lambda: torch_idx.search(q, a.k))
    ivf = FaissIndex(items, RetrieveConfig(index="ivf", ivf_nlist=1024, ivf_nprobe=32))
    (_, r_ivf), t_ivf = timed(lambda: ivf.search(q, a.k))

    def recall(r: np.ndarray) -> float:
        return float(np.mean([len(set(x) & set(y)) / a.k for x, y in zip(r, ref, strict=True)]))

    res = {
        "setup": vars(a),
        "numpy_bruteforce_qps": round(a.queries / t_ref),
        "faiss_flat_qps": round(a.queries / t_flat),
        "torch_matmul_qps": round(a.queries / t_torch),
        "faiss_ivf1024_nprobe32_qps": round(a.queries / t_ivf),
        "faiss_flat_vs_numpy": round(t_ref / t_flat, 2),
        "torch_vs_numpy": round(t_ref / t_torch, 2),
        "ivf_vs_numpy": round(t_ref / t_ivf, 2),
        "recall_flat": recall(r_flat),
        "recall_torch": recall(r_torch),
        "recall_ivf": recall(r_ivf),
    }
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
