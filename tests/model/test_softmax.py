"""The chunked softmax cross-entropy: the by-hand value, autograd's own, and bf16."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.model.softmax import distill_targets, softmax_xent


def _as_logits(logp: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, table, bias whose logits q @ table^T / temperature + bias are logp [P, N]."""
    return logp * temperature, torch.eye(logp.shape[1]), torch.zeros(logp.shape[1])


def test_the_mixed_target_by_hand():
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]]))
    q, table, bias = _as_logits(logp, 0.07)
    y = torch.tensor([0, 2])
    soft = (torch.tensor([[1, 2], [0, 1]]), torch.tensor([[0.5, 0.5], [0.0, 0.0]]))  # row 1 has no list
    ce = [-np.log(0.5), -np.log(0.7)]
    assert np.isclose(float(softmax_xent(q, table, bias, *distill_targets(y, None, 0.3), 0.07)), np.mean(ce))
    row0 = 0.7 * ce[0] + 0.3 * -(0.5 * np.log(0.25) + 0.5 * np.log(0.25))
    got = float(softmax_xent(q, table, bias, *distill_targets(y, soft, 0.3), 0.07))
    assert np.isclose(got, (row0 + ce[1]) / 2, rtol=1e-5)


def _problem(seed: int = 0, P: int = 300, N: int = 500, d: int = 16, M: int = 6):
    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(P, d, generator=g), dim=1)
    table = torch.nn.functional.normalize(torch.randn(N, d, generator=g), dim=1)
    bias = torch.randn(N, generator=g) * 0.1
    y = torch.randint(0, N, (P,), generator=g)
    idx = torch.randint(0, N, (P, M), generator=g)
    w = torch.rand(P, M, generator=g)
    w[::3] = 0.0  # every third row without a list
    w = w / w.sum(1, keepdim=True).clamp(min=1e-12)
    return q, table, bias, y, (idx, w)


def _reference(q, table, bias, y, soft, alpha: float, temperature: float) -> torch.Tensor:
    """autograd through the whole [P, N] log-softmax."""
    logp = ((q @ table.T) / temperature + bias).log_softmax(1)
    a = alpha * (soft[1].sum(1) > 0).float()
    ce = -logp.gather(1, y[:, None])[:, 0]
    distill = -(soft[1] * logp.gather(1, soft[0])).sum(1)
    return ((1 - a) * ce + a * distill).mean()


def _loss_and_grads(fn, q, table, bias):
    leaves = [x.clone().requires_grad_() for x in (q, table, bias)]
    loss = fn(*leaves)
    loss.backward()
    return float(loss.detach()), [x.grad for x in leaves]


@pytest.mark.parametrize("chunk", [7, 64, 1000])  # chunks that split rows unevenly, and one chunk
def test_equals_autograd_through_the_whole_softmax(chunk):
    q, table, bias, y, soft = _problem()
    want, want_g = _loss_and_grads(lambda a, b, c: _reference(a, b, c, y, soft, 0.3, 0.07), q, table, bias)
    cols, w = distill_targets(y, soft, 0.3)
    got, got_g = _loss_and_grads(lambda a, b, c: softmax_xent(a, b, c, cols, w, 0.07, chunk=chunk), q, table, bias)
    assert np.isclose(got, want, rtol=1e-6)
    for g, h in zip(got_g, want_g, strict=True):
        assert torch.allclose(g, h, rtol=1e-4, atol=1e-7)


def test_bf16_matmuls_stay_close():
    q, table, bias, y, soft = _problem(seed=1)
    want, want_g = _loss_and_grads(lambda a, b, c: _reference(a, b, c, y, soft, 0.3, 0.07), q, table, bias)
    cols, w = distill_targets(y, soft, 0.3)
    got, got_g = _loss_and_grads(
        lambda a, b, c: softmax_xent(a, b, c, cols, w, 0.07, compute_dtype=torch.bfloat16), q, table, bias
    )
    assert abs(got - want) / want < 1e-3
    for g, h in zip(got_g, want_g, strict=True):
        assert float((g - h).norm() / h.norm()) < 0.02
        assert g.dtype == torch.float32


def test_targets_are_distributions():
    _, _, _, y, soft = _problem(seed=2)
    cols, w = distill_targets(y, soft, 0.3)
    assert cols.shape == (len(y), 1 + soft[0].shape[1])
    assert torch.allclose(w.sum(1), torch.ones(len(y)))
    assert torch.equal(w[::3, 0], torch.ones(len(w[::3])))  # no list: the next item alone
    assert torch.allclose(w[1::3, 0], torch.full((len(w[1::3]),), 0.7))
