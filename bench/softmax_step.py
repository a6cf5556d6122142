"""The two-tower's loss, forward and backward, at a training step's size: autograd
through the whole [P, N] log-softmax (the reference: how training computed it before)
against recsys.model.softmax's chunked version in fp32 and in bf16 matmuls, on the same
tensors in one run; each prints its loss and its gradients' distance from the reference.

    python bench/softmax_step.py --positions 12800 --items 9725 3706

12,800 positions is a full step (batch 64 windows x 200 steps); 9,725 items is
ml-latest-small's catalog, 3,706 MovieLens-1M's. Targets mix the next item with a
150-column co-visitation list (train.covis_distill 0.3), as the nightly training does.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from recsys.model.softmax import CHUNK_ROWS, bf16_matmul_is_native, distill_targets, softmax_xent  # noqa: E402


def reference(q, table, bias, y, soft, alpha: float, temperature: float) -> torch.Tensor:  # type: ignore[no-untyped-def]
    logp = ((q @ table.T) / temperature + bias).log_softmax(1)  # [P, N]
    a = alpha * (soft[1].sum(1) > 0).float()
    ce = -logp.gather(1, y[:, None])[:, 0]
    distill = -(soft[1] * logp.gather(1, soft[0])).sum(1)
    return ((1 - a) * ce + a * distill).mean()


def timed(fn, q, table, bias):  # type: ignore[no-untyped-def]
    leaves = [x.clone().requires_grad_() for x in (q, table, bias)]
    t0 = time.perf_counter()
    loss = fn(*leaves)
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, float(loss.detach()), [x.grad for x in leaves]


def _methods(y, soft):  # type: ignore[no-untyped-def]
    """name -> loss(q, table, bias) over the same targets."""
    cols, ws = distill_targets(y, soft, 0.3)
    return {
        "autograd log_softmax (reference)": lambda q, t, b: reference(q, t, b, y, soft, 0.3, 0.07),
        f"chunked fp32 ({CHUNK_ROWS} rows)": lambda q, t, b: softmax_xent(q, t, b, cols, ws, 0.07),
        f"chunked bf16 ({CHUNK_ROWS} rows)": lambda q, t, b: softmax_xent(
            q, t, b, cols, ws, 0.07, compute_dtype=torch.bfloat16
        ),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--positions", type=int, default=12_800)
    p.add_argument("--items", type=int, nargs="+", default=[9_725, 3_706])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--list", type=int, default=150, help="co-visitation columns per position")
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16: {bf16_matmul_is_native()}")
    print(
        f"| items | method | forward s | backward s | step s (best of {a.repeat}) | x reference | loss | grad rel. err |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for n in a.items:
        g = torch.Generator().manual_seed(0)
        q = torch.nn.functional.normalize(torch.randn(a.positions, a.dim, generator=g), dim=1)
        table = torch.nn.functional.normalize(torch.randn(n, a.dim, generator=g), dim=1)
        bias = torch.zeros(n)
        y = torch.randint(0, n, (a.positions,), generator=g)
        idx = torch.randint(0, n, (a.positions, a.list), generator=g)
        w = torch.rand(a.positions, a.list, generator=g)
        soft = (idx, w / w.sum(1, keepdim=True))
        methods = _methods(y, soft)
        ref_s, ref_grads = None, None
        for name, fn in methods.items():
            runs = [timed(fn, q, table, bias) for _ in range(a.repeat)]
            fwd, bwd, loss, grads = min(runs, key=lambda r: r[0] + r[1])
            step = fwd + bwd
            if ref_s is None:
                ref_s, ref_grads = step, grads
            err = max(float((x - r).norm() / r.norm()) for x, r in zip(grads[:2], ref_grads[:2], strict=True))
            print(
                f"| {n:,} | {name} | {fwd:.3f} | {bwd:.3f} | {step:.3f} | {ref_s / step:.2f} | {loss:.5f} | {err:.1e} |"
            )


if __name__ == "__main__":
    main()
