"""A textbook SASRec beside the pipeline's two-tower, on the same run and the same targets.

    python bench/next_item.py contract --data DIR --work /tmp/n     # once: the outside view's run
    python bench/sasrec_reference.py --next-item /tmp/n/contract --epochs 60 [--dim 64 --max-len 200]

The reference is SASRec as published (Kang & McAuley 2018), with the full-softmax
cross-entropy of gSASRec / "SASRec with a full softmax": item-id embeddings only (no
text, no event types or time gaps), shared between input and output, learned positions,
pre-norm causal transformer blocks, every position of every user each epoch. It trains
on the split the pipeline's two-tower trains on (the state before the ranker's labels)
and is scored like `bench/next_item.py` scores the two-tower source: each user's state is
the full input history, the removed next item is ranked over the whole catalog with
the history masked. It answers one question: is a gap between the two-tower and
co-visitation our model's, or the data's? Prints test NDCG@10 per epoch.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from recsys.config import load_config  # noqa: E402
from recsys.features import Sequences, load_catalog, load_sequences  # noqa: E402
from recsys.model.data import windows  # noqa: E402
from recsys.rundir import RunDir  # noqa: E402


class SASRec(nn.Module):
    def __init__(self, n_items: int, dim: int, max_len: int, layers: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.emb = nn.Embedding(n_items + 1, dim, padding_idx=0)  # row 0 = padding, item i = row i + 1
        self.pos = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim, dropout, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.scale = dim**0.5
        # Small initial embeddings (std 0.02, as BERT4Rec and most SASRec ports): the
        # output logits are <state, embedding>, so N(0, 1) rows start at logits ~ dim.
        nn.init.normal_(self.emb.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """seq [B, L] item rows (0 = padding, left-aligned) -> [B, L, d] states."""
        B, L = seq.shape
        x = self.emb(seq) * self.scale + self.pos(torch.arange(L).expand(B, L))
        causal = torch.triu(torch.ones(L, L, dtype=torch.bool), diagonal=1)
        h = self.blocks(self.drop(x), mask=causal, src_key_padding_mask=seq == 0)
        return self.norm(h)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.emb.weight[1:].T  # [..., N]


def batch(seqs: Sequences, wins: np.ndarray) -> torch.Tensor:
    """windows [B, 3+] -> [B, L] item rows (+1; 0 = padding), left-aligned."""
    L = int((wins[:, 2] - wins[:, 1]).max())
    out = np.zeros((len(wins), L), dtype=np.int64)
    for b, (r, s, e) in enumerate(wins[:, :3]):
        a = seqs.offsets[r]
        out[b, : e - s] = seqs.items[a + s : a + e] + 1
    return torch.from_numpy(out)


def test_ndcg(model: SASRec, seqs: Sequences, rows: np.ndarray, targets: np.ndarray, max_len: int) -> float:
    model.eval()
    ranks = []
    with torch.no_grad():
        for a in range(0, len(rows), 256):
            r = rows[a : a + 256]
            ends = seqs.lengths()[r]
            wins = np.stack([r, np.maximum(ends - max_len, 0), ends], 1)
            seq = batch(seqs, wins)
            h = model(seq)[torch.arange(len(r)), torch.from_numpy(ends - wins[:, 1] - 1)]  # [b, d] last state
            s = model.logits(h)  # [b, N]
            for j, u in enumerate(r):
                s[j, torch.from_numpy(seqs.row(int(u))[0])] = -1e9
            t = torch.from_numpy(targets[a : a + 256])
            ranks.append((s > s.gather(1, t[:, None])).sum(1).numpy())
    rank = np.concatenate(ranks)
    return float(np.mean(np.where(rank < 10, 1 / np.log2(rank + 2), 0.0)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--next-item", type=Path, required=True, help="a bench/next_item.py work folder (WORK/DATASET)")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=200)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=1)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    over = {"evaluate": {"holdout_days": 0},
            "events": {"exclude_policy": "interacted", "lookback_days": 100_000, "bot_max_events_per_day": 1_000_000},
            "paths": {"data_root": str(a.next_item / "input"), "work_root": str(a.next_item / "work")}}  # fmt: skip
    cfg = load_config(overrides=over, environ={})
    rd = RunDir(cfg, dt.date.fromisoformat((a.next_item / "date.txt").read_text().strip()))
    catalog = load_catalog(rd.require("features", "catalog"))
    types = sorted(cfg.events.weights)
    train = load_sequences(rd.require("features", cfg.model_split(), "sequences"), catalog.index(), types)
    full = load_sequences(rd.require("features", "full", "sequences"), catalog.index(), types)
    ho = pq.read_table(a.next_item / "targets.parquet").to_pandas()
    target = dict(zip(ho.user_id, catalog.index().get_indexer(ho.item_id), strict=True))
    rows = np.array([i for i, u in enumerate(full.user_ids) if target.get(u, -1) >= 0])
    targets = np.array([target[full.user_ids[r]] for r in rows])
    wins = windows(train, np.arange(len(train)), a.max_len)
    model = SASRec(len(catalog.ids), a.dim, a.max_len, a.layers, a.heads, a.dropout)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr, betas=(0.9, 0.98))
    print(f"{len(rows)} test users, {len(wins)} windows, {len(catalog.ids)} items; {vars(a)}")
    print("| epoch | loss | test NDCG@10 | seconds |\n|---:|---:|---:|---:|")
    for e in range(1, a.epochs + 1):
        t0 = time.time()
        model.train()
        losses = []
        wins = wins[rng.permutation(len(wins))]
        for s in range(0, len(wins), a.batch):
            seq = batch(train, wins[s : s + a.batch])
            h = model(seq[:, :-1])  # position t predicts step t + 1
            y = seq[:, 1:]
            m = y > 0
            loss = F.cross_entropy(model.logits(h[m]), y[m] - 1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        ndcg = test_ndcg(model, full, rows, targets, a.max_len)
        print(f"| {e} | {np.mean(losses):.3f} | {ndcg:.4f} | {time.time() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
