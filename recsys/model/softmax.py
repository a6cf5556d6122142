"""Softmax cross-entropy over a large item table, computed in row chunks.

The two-tower's loss at every position is a softmax over the whole catalog (or the
sampled candidates): logits [P, N] = q [P, d] @ table [N, d]^T / temperature + bias. Built
as one tensor, log_softmax and its backward pass stream P x N floats through memory
several times (12,800 positions x 9,725 items: 0.5 GB per pass), and on CPU those passes
cost more than the matmuls. Here the logits exist one chunk of rows at a time (a few MB,
cache-sized): the forward pass keeps each row's log-sum-exp, the backward pass recomputes
the chunk's logits and forms softmax - target in place. One matmul more than autograd's
three, no P x N tensor ever.

Targets are sparse distributions: each row's columns [P, M] and weights [P, M] summing to
1 (the next item alone, or the next item mixed with co-visitation's list, see
`distill_targets`). The loss is the mean over rows of -sum_j w_j log softmax(logits)_j,
exactly what `log_softmax` + gather gives (tests/model/test_softmax.py), and its gradient
is (softmax - w) / P per row.

`compute_dtype` bfloat16 runs the three matmuls in bf16 (fp32 everywhere else: the
log-sum-exp, the softmax, the gradient sums). On CPUs with AVX-512 BF16 that measured
2-4x the fp32 matmul rate (docs/benchmarks.md, "Training step").
"""

from __future__ import annotations

import torch

# Rows per chunk: 256 x 9,725 items x 4 B = 10 MB of logits, cache-sized. Measured at
# 12,800 positions x 9,725 items (bench/softmax_step.py): fp32 128 / 256 / 1,024 rows
# 1.84 / 1.70 / 1.78 s a step, bf16 256 / 1,024 rows 0.77 / 1.17 s.
CHUNK_ROWS = 256


class _ChunkedSoftmaxXent(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, table, bias, cols, weights, inv_temp, compute_dtype, chunk):  # type: ignore[no-untyped-def]
        bufs = _Buffers(q, table, bias, inv_temp, compute_dtype, chunk)
        lse = torch.empty(len(q), dtype=torch.float32, device=q.device)
        total = q.new_zeros((), dtype=torch.float32)
        for s in range(0, len(q), chunk):
            logits = bufs.logits(s)[: len(lse[s : s + chunk])]  # [c, N'] fp32
            picked = (logits.gather(1, cols[s : s + chunk]) * weights[s : s + chunk]).sum(1)  # [c]
            # log-sum-exp in place (torch.logsumexp allocates per pass: 20% of a step)
            top = logits.amax(1)  # [c]
            lse[s : s + chunk] = logits.sub_(top[:, None]).exp_().sum(1).log_().add_(top)
            total += (lse[s : s + chunk] - picked).sum()
        ctx.save_for_backward(q, table, bias, cols, weights, lse)
        ctx.inv_temp, ctx.compute_dtype, ctx.chunk = inv_temp, compute_dtype, chunk
        return total / len(q)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        q, table, bias, cols, weights, lse = ctx.saved_tensors
        bufs = _Buffers(q, table, bias, ctx.inv_temp, ctx.compute_dtype, ctx.chunk)
        scale = grad.float() / len(q)
        dq = torch.empty(bufs.qd.shape, dtype=bufs.dt, device=q.device)  # [P', d]
        dtable = torch.zeros(bufs.tq.shape, dtype=torch.float32, device=table.device)  # [N', d]
        part = torch.empty_like(bufs.tq)  # one chunk's share of dtable
        dbias = torch.zeros(len(bufs.bias), dtype=torch.float32, device=bias.device)
        for s in range(0, len(q), ctx.chunk):
            g = bufs.logits(s)  # [chunk, N']
            c = len(lse[s : s + ctx.chunk])
            g[c:] = 0.0  # padding rows
            g[:c].sub_(lse[s : s + c, None]).exp_()  # softmax
            g[:c].scatter_add_(1, cols[s : s + c], -weights[s : s + c])  # softmax - target
            g.mul_(scale)
            dbias += g.sum(0)
            gd = bufs.in_dt(g)
            torch.mm(gd, bufs.tq, out=dq[s : s + ctx.chunk])
            torch.mm(gd.T, bufs.qd[s : s + ctx.chunk], out=part)
            dtable += part
        dq = dq[: len(q)].float().mul_(ctx.inv_temp).to(q.dtype)
        dtable = dtable[: len(table)].mul_(ctx.inv_temp).to(table.dtype)
        return dq, dtable, dbias[: len(bias)].to(bias.dtype), None, None, None, None, None


# The table's rows are padded to a multiple of this (bias -inf: probability 0) so that a
# sampled softmax, whose candidates change in number every step, multiplies few shapes.
PAD_ITEMS = 512


class _Buffers:
    """One call's operands in the compute dtype, padded so every matmul of the call has
    one shape (rows to whole chunks, items to PAD_ITEMS), and two [chunk, N'] work buffers
    reused by every chunk. Measured on the ML-1M-sized set's steps (docs/benchmarks.md):
    a tensor allocated per chunk grew the heap under glibc's malloc, and oneDNN keeps a
    primitive per bf16 matmul shape (the last chunk's rows differ every step); with both,
    training's peak RSS rose 1.2 -> 3.6 GB over two epochs."""

    def __init__(self, q, table, bias, inv_temp: float, dt: torch.dtype, chunk: int) -> None:  # type: ignore[no-untyped-def]
        self.dt, self.chunk, self.inv_temp = dt, chunk, inv_temp
        rows, n = -(-len(q) // chunk) * chunk, -(-len(table) // PAD_ITEMS) * PAD_ITEMS
        self.qd = torch.zeros((rows, q.shape[1]), dtype=dt, device=q.device)  # [P', d]
        self.qd[: len(q)] = q
        self.tq = torch.zeros((n, table.shape[1]), dtype=dt, device=table.device)  # [N', d]
        self.tq[: len(table)] = table
        self.bias = torch.full((n,), float("-inf"), device=bias.device)  # [N']
        self.bias[: len(bias)] = bias
        self.prod = torch.empty((chunk, n), dtype=dt, device=q.device)  # the matmul's output
        self.f32 = self.prod if dt == torch.float32 else torch.empty_like(self.prod, dtype=torch.float32)

    def logits(self, s: int) -> torch.Tensor:
        """Rows s..s + chunk of q @ table^T / temperature + bias, [chunk, N'] fp32, in the
        work buffer (valid until the next call); padding items read -inf."""
        torch.mm(self.qd[s : s + self.chunk], self.tq.T, out=self.prod)
        if self.f32 is not self.prod:
            self.f32.copy_(self.prod)
        return self.f32.mul_(self.inv_temp).add_(self.bias)

    def in_dt(self, x: torch.Tensor) -> torch.Tensor:
        """x [chunk, N'] fp32 in the compute dtype, in the matmul buffer."""
        return x if x.dtype == self.dt else self.prod.copy_(x)


def softmax_xent(
    q: torch.Tensor,
    table: torch.Tensor,
    bias: torch.Tensor,
    cols: torch.Tensor,
    weights: torch.Tensor,
    temperature: float,
    compute_dtype: torch.dtype = torch.float32,
    chunk: int = CHUNK_ROWS,
) -> torch.Tensor:
    """Mean over rows of the cross-entropy of targets (cols [P, M], weights [P, M], rows
    summing to 1) under softmax(q [P, d] @ table [N, d]^T / temperature + bias [N])."""
    w = weights.float()
    return _ChunkedSoftmaxXent.apply(q, table, bias, cols, w, 1.0 / temperature, compute_dtype, chunk)


def distill_targets(
    y: torch.Tensor, soft: tuple[torch.Tensor, torch.Tensor] | None, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's target distribution as columns and weights [P, 1 + M]: the next item y
    [P] at 1 - alpha plus alpha x its co-visitation list (soft: columns [P, M], weights
    [P, M] summing to 1, or to 0 where the row has none, which then keeps y at 1)."""
    if soft is None:
        return y[:, None], torch.ones(len(y), 1, device=y.device)
    a = alpha * (soft[1].sum(1) > 0).float()  # [P]
    cols = torch.cat([y[:, None], soft[0]], 1)
    return cols, torch.cat([(1 - a)[:, None], a[:, None] * soft[1].float()], 1)


def bf16_matmul_is_native() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX-512 BF16 or AMX), where bf16
    matmuls are faster than fp32; elsewhere they are emulated and slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
