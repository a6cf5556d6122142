"""Two-tower model: a text item tower over the pretrained encoder and a causal user tower.

Item tower:  text -> encoder (frozen prefix + trainable top) -> mean pool [H]
             -> Linear(H, d) (+ id embedding for warm items) -> L2 normalise [d].
             Items without an id row (new, long tail) are represented by text alone.
User tower:  SASRec-style causal transformer over the user's recent items, reading the
             item tower's vectors (a detached table refreshed during training) plus
             position, event-type and time-gap embeddings -> L2-normalised state [d] at
             every position; the last one is the user's embedding.
Score = <user, item> / temperature + bias(item). The bias is a learned scalar per item
(a linear function of its text, plus an id term for warm items): unit-length vectors
alone cannot express that some items are simply bought more, and logQ-corrected
training removes popularity from the dot product. Retrieval folds the bias into the
inner product with one extra dimension: [v / temperature, b] . [u, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from recsys.model.encoder import TextEncoder

N_GAP_BUCKETS = 24


def gap_buckets(ts_seconds: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[B, L] event times -> [B, L] bucket ids of log2(1 + minutes since previous step).

    0 = padding, 1 = first step, 2.. = log buckets. Only the past is used (causal).
    """
    prev = torch.cat([ts_seconds[:, :1], ts_seconds[:, :-1]], dim=1)
    minutes = ((ts_seconds - prev).clamp(min=0) / 60.0).float()
    b = torch.floor(torch.log2(1.0 + minutes)).long().clamp(max=N_GAP_BUCKETS - 3) + 2
    b[:, 0] = 1
    return torch.where(valid, b, torch.zeros_like(b))


class ItemTower(nn.Module):
    id_index: torch.Tensor  # [n_items] id-embedding row per item (0 = none); a buffer

    def __init__(self, encoder: TextEncoder, dim: int, id_index: torch.Tensor) -> None:
        super().__init__()
        self.encoder = encoder
        self.proj = nn.Linear(encoder.hidden, dim)
        # id_index: [N_items] long, 0 = no id row (cold), k>0 = row k.
        self.register_buffer("id_index", id_index.long(), persistent=True)
        n_rows = int(id_index.max().item()) + 1 if len(id_index) else 1
        self.id_emb = nn.Embedding(n_rows, dim, padding_idx=0)
        nn.init.normal_(self.id_emb.weight, std=0.01)
        self.text_bias = nn.Linear(encoder.hidden, 1)
        self.id_bias = nn.Embedding(n_rows, 1, padding_idx=0)
        nn.init.zeros_(self.text_bias.weight)
        nn.init.zeros_(self.text_bias.bias)
        nn.init.zeros_(self.id_bias.weight)
        with torch.no_grad():
            self.id_emb.weight[0].zero_()

    def from_pooled(self, pooled: torch.Tensor, item_idx: torch.Tensor) -> torch.Tensor:
        """[B, H] pooled text + [B] item indices -> [B, d] unit vectors."""
        v = self.proj(pooled) + self.id_emb(self.id_index[item_idx])
        return F.normalize(v, dim=-1)

    def bias(self, pooled: torch.Tensor, item_idx: torch.Tensor) -> torch.Tensor:
        """[B, H] pooled text + [B] item indices -> [B] popularity-like prior."""
        return (self.text_bias(pooled) + self.id_bias(self.id_index[item_idx])).squeeze(-1)


class UserTower(nn.Module):
    def __init__(self, dim: int, max_len: int, n_types: int, layers: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.max_len = max_len
        self.in_proj = nn.Linear(dim, dim)
        self.pos = nn.Embedding(max_len, dim)
        self.type_emb = nn.Embedding(n_types + 1, dim, padding_idx=0)
        self.gap_emb = nn.Embedding(N_GAP_BUCKETS, dim, padding_idx=0)
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=dim * 4, dropout=dropout, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        self.scale = math.sqrt(dim)

    def _inputs(self, item_vecs: torch.Tensor, types: torch.Tensor, gaps: torch.Tensor) -> torch.Tensor:
        B, L, _ = item_vecs.shape
        pos = torch.arange(L, device=item_vecs.device).unsqueeze(0).expand(B, L)
        x = self.in_proj(item_vecs) * self.scale + self.pos(pos) + self.type_emb(types) + self.gap_emb(gaps)
        return self.drop(x)

    def forward(
        self, item_vecs: torch.Tensor, types: torch.Tensor, gaps: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """item_vecs [B, L, d], types/gaps [B, L] long, valid [B, L] bool (left-aligned)
        -> [B, L, d] unit vectors; position t sees steps <= t only."""
        x = self._inputs(item_vecs, types, gaps)
        L = x.shape[1]
        causal = torch.triu(torch.ones(L, L, dtype=torch.bool, device=x.device), diagonal=1)
        h = self.blocks(x, mask=causal, src_key_padding_mask=~valid)
        h = self.out(self.norm(h))
        return F.normalize(h, dim=-1)

    def last(
        self, item_vecs: torch.Tensor, types: torch.Tensor, gaps: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """forward()'s state at each row's last valid step, [B, d] (same inputs), computing
        only what that state needs: every block but the last over every position, then
        the last block's attention query, residuals and feed-forward at that one position.
        The last step sees every valid step, so its attention needs only the padding
        mask. Serving reads nothing but this state (embed, validation)."""
        x = self._inputs(item_vecs, types, gaps)
        B, L, _ = x.shape
        pad = ~valid
        *body, top = self.blocks.layers
        if body:
            causal = torch.triu(torch.ones(L, L, dtype=torch.bool, device=x.device), diagonal=1)
            for layer in body:
                x = layer(x, src_mask=causal, src_key_padding_mask=pad)
        last = valid.sum(1).clamp(min=1) - 1  # [B]
        kv = top.norm1(x)  # [B, L, d]
        xq = x[torch.arange(B, device=x.device), last].unsqueeze(1)  # [B, 1, d]
        a = top.self_attn(kv[torch.arange(B, device=x.device), last].unsqueeze(1), kv, kv, key_padding_mask=pad,
                          need_weights=False)[0]  # fmt: skip
        xq = xq + top.dropout1(a)
        xq = xq + top._ff_block(top.norm2(xq))
        h = self.out(self.norm(xq.squeeze(1)))
        return F.normalize(h, dim=-1)


class TwoTower(nn.Module):
    def __init__(
        self,
        encoder: TextEncoder,
        dim: int,
        id_index: torch.Tensor,
        max_len: int,
        n_types: int,
        layers: int,
        heads: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.item = ItemTower(encoder, dim, id_index)
        self.user = UserTower(dim, max_len, n_types, layers, heads, dropout)
