"""GPU paths: skipped where torch sees no CUDA device (CI has none)."""

import numpy as np
import pytest
import torch

from recsys.retrieve import TorchIndex

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


def test_torch_gpu_index_matches_exact_cpu():
    rng = np.random.default_rng(0)
    items = rng.normal(size=(10_000, 64)).astype(np.float32)
    q = rng.normal(size=(256, 64)).astype(np.float32)
    gpu = TorchIndex(items, "cuda")
    assert gpu.backend == "torch-cuda-exact"
    _s, r = gpu.search(q, 50)
    exact = np.argsort(-(q @ items.T), axis=1)[:, :50]
    assert (r == exact).mean() > 0.999  # float reduction order may swap exact ties


def test_full_encoder_trains_in_mixed_precision():
    from recsys.model.encoder import TextEncoder

    enc = TextEncoder(None, n_train=-1, max_len=32).cuda()
    assert enc.split == 0
    opt = torch.optim.AdamW([p for p in enc.parameters() if p.requires_grad], lr=1e-5)
    tokens = enc.tokenize(["chef knife", "cutting board", "headphones", "earbuds"], "cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        v = torch.nn.functional.normalize(enc(tokens).float(), dim=-1)
        loss = -(v[0] @ v[1]) - (v[2] @ v[3])
    loss.backward()
    opt.step()
    assert all(p.grad is not None for p in enc.bert.encoder.layer[0].parameters())


def test_chunked_softmax_in_bf16_on_cuda_matches_fp32():
    from recsys.model.softmax import softmax_xent

    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(500, 32, generator=g), dim=1)
    table = torch.nn.functional.normalize(torch.randn(2000, 32, generator=g), dim=1)
    bias, cols = torch.zeros(2000), torch.randint(0, 2000, (500, 1), generator=g)
    out = []
    for dev, dt in [("cpu", torch.float32), ("cuda", torch.bfloat16)]:
        leaves = [x.to(dev).requires_grad_() for x in (q, table, bias)]
        loss = softmax_xent(*leaves, cols.to(dev), torch.ones(500, 1, device=dev), 0.07, compute_dtype=dt)
        loss.backward()
        out.append((float(loss), [x.grad.cpu() for x in leaves]))
    assert abs(out[0][0] - out[1][0]) / out[0][0] < 1e-3
    for a, b in zip(out[0][1][:2], out[1][1][:2], strict=True):
        assert float((a - b).norm() / a.norm()) < 0.02
