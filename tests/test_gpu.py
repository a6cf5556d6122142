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
