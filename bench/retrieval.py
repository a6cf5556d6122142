"""Retrieval throughput: our index (faiss, flat or IVF) vs a brute-force reference
(numpy matmul + argpartition) on the same vectors, in one run.

    python bench/retrieval.py --items 100000 --queries 20000 --dim 65 --k 100
    python bench/retrieval.py --run-dir WORK/runs/DATE/main --queries 20000 --k 100 \
        [--nprobe 8,16,32,64] [--max-items 50000]

Random unit vectors by default (IVF's worst case: no cluster structure); with --run-dir
the night's own vectors as retrieve searches them (items [v / temperature, bias], users
[u, 1]: embeddings/items.npy, item_bias.npy, scoring.json, users_full.npy), queries a
random sample of its users. Prints queries/s of each index, IVF's build (train + add)
seconds, and IVF's recall@k against the exact top k.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

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


def random_vectors(a: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """([items, dim] unit rows, [queries, dim]) drawn at random."""
    rng = np.random.default_rng(0)
    items = rng.normal(size=(a.items, a.dim)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    return items, rng.normal(size=(a.queries, a.dim)).astype(np.float32)


def run_vectors(run_dir: Path, n_queries: int, max_items: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The night's scoring vectors: ([N, d+1] items, [Q, d+1] sampled users), as
    recsys.retrieve.Context.scoring_items / scoring_users build them; max_items > 0: a
    random subset of that many items (a smaller catalog of the same shop)."""
    emb = run_dir / "embeddings"
    v = np.load(emb / "items.npy")
    b = np.load(emb / "item_bias.npy") if (emb / "item_bias.npy").is_file() else np.zeros(len(v), np.float32)
    temp = float(json.loads((emb / "scoring.json").read_text())["temperature"])
    items = np.hstack([v / temp, b[:, None]]).astype(np.float32)
    if 0 < max_items < len(items):
        items = items[np.sort(np.random.default_rng(1).choice(len(items), max_items, replace=False))]
    users = np.load(emb / "users_full.npy", mmap_mode="r")
    pick = np.sort(np.random.default_rng(0).choice(len(users), min(n_queries, len(users)), replace=False))
    u = np.asarray(users[pick], dtype=np.float32)
    return items, np.hstack([u, np.ones((len(u), 1), np.float32)])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=20_000)
    p.add_argument("--dim", type=int, default=65)  # 64 + the bias dimension
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--run-dir", type=Path, help="search this night's vectors instead of random ones")
    p.add_argument("--max-items", type=int, default=0, help="with --run-dir: a random subset of the items")
    p.add_argument("--nlist", type=int, default=1024)
    p.add_argument("--nprobe", default="32", help="comma-separated IVF probe counts")
    a = p.parse_args()
    items, q = run_vectors(a.run_dir, a.queries, a.max_items) if a.run_dir else random_vectors(a)
    ref, t_ref = timed(lambda: brute(items, q, a.k))
    flat = FaissIndex(items, RetrieveConfig(index="flat"))
    (_, r_flat), t_flat = timed(lambda: flat.search(q, a.k))
    torch_idx = TorchIndex(items, "cpu")
    (_, r_torch), t_torch = timed(lambda: torch_idx.search(q, a.k))

    def recall(r: np.ndarray) -> float:
        return round(float(np.mean([len(set(x) & set(y)) / a.k for x, y in zip(r, ref, strict=True)])), 4)

    res: dict[str, object] = {
        "setup": {
            **vars(a),
            "run_dir": str(a.run_dir) if a.run_dir else None,
            "items": len(items),
            "queries": len(q),
            "dim": items.shape[1],
        },
        "numpy_bruteforce_qps": round(len(q) / t_ref),
        "faiss_flat_qps": round(len(q) / t_flat),
        "torch_matmul_qps": round(len(q) / t_torch),
        "faiss_flat_vs_numpy": round(t_ref / t_flat, 2),
        "torch_vs_numpy": round(t_ref / t_torch, 2),
        "recall_flat": recall(r_flat),
        "recall_torch": recall(r_torch),
    }
    for nprobe in [int(x) for x in a.nprobe.split(",")]:
        ivf, t_build = timed(
            lambda n=nprobe: FaissIndex(items, RetrieveConfig(index="ivf", ivf_nlist=a.nlist, ivf_nprobe=n))
        )
        (_, r_ivf), t_ivf = timed(lambda ivf=ivf: ivf.search(q, a.k))
        res[f"ivf{a.nlist}_nprobe{nprobe}"] = {
            "build_s": round(t_build, 2),
            "qps": round(len(q) / t_ivf),
            "vs_flat": round(t_flat / t_ivf, 2),
            "recall": recall(r_ivf),
        }
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
