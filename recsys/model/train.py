"""Fine-tune the two-tower model on the train split's sequences.

Objective: next-item prediction at every position of each user's sequence (SASRec-style)
with a full softmax over the catalog up to train.full_softmax_max_items, else a sampled
softmax over the batch's targets plus uniform random negatives, corrected by log of each
candidate's expected count in the sample (logQ), so popular items are not over-penalised
for appearing as negatives more often. Either is computed a chunk of positions at a time
(recsys.model.softmax), in bf16 matmuls where the hardware has them.
Validation: a random val_fraction of users keep their last val_tail_steps steps out of
training; Recall@20 of those (new) items over the whole catalog, history masked, from
the state before the tail. Several targets per user and a multi-step horizon match the
training objective and make the signal less noisy than one next item. The best epoch is
kept (early stopping).
Training stops at train.time_budget_s, max_epochs or early stopping, whichever first.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys import jsonio
from recsys.config import Config
from recsys.device import torch_device
from recsys.model.data import (
    Catalog,
    Sequences,
    length_batches,
    load_catalog,
    load_sequences,
    pad_batch,
    pad_windows,
    windows,
)
from recsys.model.encoder import PrefixCache, TextEncoder, TextStore
from recsys.model.softmax import bf16_matmul_is_native, distill_targets, softmax_xent
from recsys.model.towers import TwoTower, gap_buckets
from recsys.progress import Progress
from recsys.rundir import RunDir

log = logging.getLogger(__name__)


@dataclass
class Bundle:
    """A model with what it needs to run: its item vocabulary and event types."""

    model: TwoTower
    item_ids: np.ndarray  # [N] str, the catalog order the id_index refers to
    type_names: list[str]
    device: torch.device
    cache: PrefixCache | None = None
    texts: list[str] | None = None

    def item_vectors(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[n] item indices -> ([n, d] unit item-tower vectors, [n] biases), differentiable."""
        enc = self.model.item.encoder
        if self.cache is not None and self.cache.pooled is not None:
            pooled = self.cache.pooled[idx.cpu()].to(self.device)
        elif self.cache is not None:
            h, m = self.cache.batch(idx.cpu())
            pooled = enc.top(h.to(self.device), m.to(self.device))
        else:
            assert self.texts is not None
            tokens = enc.tokenize([self.texts[int(i)] for i in idx], self.device)
            pooled = enc(tokens)
        pooled = pooled.float()
        idx = idx.to(self.device)
        return self.model.item.from_pooled(pooled, idx), self.model.item.bias(pooled, idx)

    @torch.no_grad()
    def item_table(self, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
        """Every item's vector and bias: ([N, d], [N]) (no grad)."""
        was = self.model.training
        self.model.eval()
        vecs, biases = [], []
        n = len(self.item_ids)
        for i in range(0, n, batch_size):
            idx = torch.arange(i, min(i + batch_size, n))
            with _autocast(self.device):
                v, b = self.item_vectors(idx)
            vecs.append(v.float())
            biases.append(b.float())
        self.model.train(was)
        if not vecs:
            d = self.model.user.in_proj.in_features
            return torch.zeros(0, d, device=self.device), torch.zeros(0, device=self.device)
        return torch.cat(vecs), torch.cat(biases)

    @torch.no_grad()
    def user_vectors(self, seqs: Sequences, table: torch.Tensor, max_len: int, batch_size: int = 512,
                     rows: np.ndarray | None = None, drop_last: int = 0,
                     progress: str | None = None) -> torch.Tensor:  # fmt: skip
        """User-tower state after each user's last step: [U, d] (no grad), in rows' order.
        progress: a label to show progress under (the embed stage), None for quiet calls.

        Users go through the tower shortest history first, so a batch is padded to
        about its own users' length: a batch pads to its longest row, and in random
        order nearly every batch of 1,024 holds a full-length one (at 1M synthetic users
        half of the positions computed were padding; median history 22 of 50 steps).
        Padding never changes a user's state (it sits after the last step, and the
        attention is causal), only the work."""
        was = self.model.training
        self.model.eval()
        rows = np.arange(len(seqs)) if rows is None else np.asarray(rows)
        steps = np.minimum(np.maximum(seqs.lengths()[rows] - drop_last, 0), max_len)  # [U]
        order = np.argsort(steps, kind="stable")  # [U] shortest first
        out = []
        bar = Progress(len(rows), progress, "users") if progress else None
        for i in range(0, len(rows), batch_size):
            r = rows[order[i : i + batch_size]]
            if bar is not None:
                bar.update(len(r))
            items, types, ts, valid = (t.to(self.device) for t in pad_batch(seqs, r, max_len, drop_last))
            with _autocast(self.device):
                out.append(self.model.user.last(table[items], types, gap_buckets(ts, valid), valid).float())
        if bar is not None:
            bar.close()
        self.model.train(was)
        if not out:
            return torch.zeros(0, table.shape[1], device=self.device)
        inverse = torch.from_numpy(np.argsort(order)).to(self.device)  # back to rows' order
        return torch.cat(out)[inverse]


def matmul_dtype(cfg: Config, device: torch.device) -> torch.dtype:
    """bf16 for the softmax's matmuls where train.mixed_precision is on and the device
    multiplies bf16 natively (recsys.model.softmax); fp32 otherwise."""
    native = device.type == "cuda" or (device.type == "cpu" and bf16_matmul_is_native())
    return torch.bfloat16 if cfg.train.mixed_precision and native else torch.float32


def _autocast(device: torch.device, enabled: bool = True):  # type: ignore[no-untyped-def]
    # bf16 autocast on CUDA (train.mixed_precision); a no-op context on CPU.
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def make_two_tower(cfg: Config, encoder: TextEncoder, id_index: torch.Tensor, dim: int, n_types: int) -> TwoTower:
    """The one place the model is assembled (training and loading share it)."""
    return TwoTower(
        encoder=encoder,
        dim=dim,
        id_index=id_index,
        max_len=cfg.model.max_seq_len,
        n_types=n_types,
        layers=cfg.model.user_layers,
        heads=cfg.model.user_heads,
        dropout=cfg.model.dropout,
    )


def encoder_layers_to_train(cfg: Config, device: torch.device) -> int:
    return cfg.model.train_encoder_layers_gpu if device.type == "cuda" else cfg.model.train_encoder_layers_cpu


def build_model(cfg: Config, catalog: Catalog, item_counts: np.ndarray, device: torch.device) -> TwoTower:
    encoder = TextEncoder(cfg.model.encoder_path, encoder_layers_to_train(cfg, device), cfg.model.max_text_len)
    warm = item_counts >= cfg.model.id_embedding_min_count
    id_index = np.zeros(len(catalog.ids), dtype=np.int64)
    id_index[warm] = np.arange(1, int(warm.sum()) + 1)
    return make_two_tower(cfg, encoder, torch.from_numpy(id_index), cfg.model.dim, len(type_names(cfg)))


def type_names(cfg: Config) -> list[str]:
    return cfg.type_names()


def find_previous_model(cfg: Config, rd: RunDir) -> Path | None:
    """Newest model of an earlier logical date under the same work root (warm start);
    fetched into the local mirror when the work root is a URL."""
    from recsys import storage

    best = None
    for rel in storage.list_matching(cfg.paths.work_root, "runs/*/*/model/model.pt"):
        date = rel.split("/")[1]
        if date < rd.date.isoformat() and (best is None or date >= best.split("/")[1]):
            best = rel
    if best is None:
        return None
    model_dir = storage.fetch(cfg.paths.work_root, cfg.local_work_root(), best.rsplit("/", 1)[0])
    return model_dir / "model.pt"


def warm_start(model: TwoTower, item_ids: np.ndarray, prev_path: Path) -> dict[str, Any]:
    """Copy every tensor whose shape matches; id-embedding rows are matched by item id."""
    prev_state = torch.load(prev_path, map_location="cpu", weights_only=True)
    prev_meta = json.loads((prev_path.parent / "meta.json").read_text())
    state = model.state_dict()
    copied, skipped = 0, []
    for k, v in prev_state.items():
        if k in ("item.id_emb.weight", "item.id_index"):
            continue
        if k in state and state[k].shape == v.shape:
            state[k] = v
            copied += 1
        else:
            skipped.append(k)
    # id rows: new row for item x <- previous row for item x, when both runs have one.
    prev_ids = np.array(prev_meta["item_ids"], dtype=object)
    prev_pos = {x: i for i, x in enumerate(prev_ids)}
    prev_index = prev_state["item.id_index"].numpy()
    new_index = model.item.id_index.numpy()
    emb = state["item.id_emb.weight"].clone()
    moved = 0
    for i, x in enumerate(item_ids):
        j = prev_pos.get(x)
        if j is not None and new_index[i] > 0 and prev_index[j] > 0:
            emb[new_index[i]] = prev_state["item.id_emb.weight"][prev_index[j]]
            moved += 1
    state["item.id_emb.weight"] = emb
    model.load_state_dict(state)
    return {"from": str(prev_path), "tensors_copied": copied, "tensors_skipped": skipped, "id_rows_copied": moved}


def _target_positions(
    valid: torch.Tensor,
    ts: torch.Tensor,
    n_pos: int,
    horizon_days: float,
    rng: np.random.Generator,
    first: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions (b, t) that have a later step, each with its target step j: the next
    step when horizon_days == 0, else a uniform step in (t, t_h] where t_h is the last
    step within horizon_days of t (at least t + 1). n_pos > 0 samples that many positions;
    0 = all. first [B]: positions before first[b] are context only
    (recsys.model.data.windows). valid [B, L] bool, ts [B, L] -> b, t, j [P] int64."""
    v = valid.cpu().numpy()
    lens = v.sum(1)  # [B]
    has_next = np.zeros_like(v)
    has_next[:, :-1] = v[:, 1:]
    if first is not None:
        has_next &= np.arange(v.shape[1])[None, :] >= first[:, None]
    b_idx, t_idx = np.nonzero(has_next)
    if n_pos and len(b_idx) > n_pos:
        pick = rng.choice(len(b_idx), n_pos, replace=False)
        b_idx, t_idx = b_idx[pick], t_idx[pick]
    if horizon_days > 0 and len(b_idx):
        ts_np = ts.cpu().numpy()
        h = int(horizon_days * 86400)
        hi = np.array([np.searchsorted(ts_np[b, : lens[b]], ts_np[b, t] + h, side="right") - 1
                       for b, t in zip(b_idx, t_idx, strict=True)])  # fmt: skip
        hi = np.maximum(hi, t_idx + 1)
        j_idx = rng.integers(t_idx + 1, hi + 1)
    else:
        j_idx = t_idx + 1
    return b_idx.astype(np.int64), t_idx.astype(np.int64), np.asarray(j_idx, dtype=np.int64)


def _positions_and_targets(
    states: torch.Tensor,
    items: torch.Tensor,
    ts: torch.Tensor,
    valid: torch.Tensor,
    n_pos: int,
    horizon_days: float,
    rng: np.random.Generator,
    first: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The states of _target_positions' positions and their targets:
    states [B, L, d], items/ts [B, L] long, valid [B, L] bool -> q [P, d], y [P]."""
    b, t, j = (torch.from_numpy(x).to(items.device) for x in _target_positions(valid, ts, n_pos, horizon_days, rng,
                                                                                first))  # fmt: skip
    return states[b, t], items[b, j]


def covis_table(path: Path, idx: Any, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The night's co-visitation lists as dense rows: neighbours [N, k] long and their
    scores [N, k] float (0 where a list is shorter), item rows as in idx."""
    from recsys.retrieve import load_covisitation

    lists = load_covisitation(path, idx)
    nbr = np.zeros((len(idx), k), dtype=np.int64)
    val = np.zeros((len(idx), k), dtype=np.float32)
    for a, (b, sc) in lists.items():
        nbr[a, : min(k, len(b))], val[a, : min(k, len(b))] = b[:k], sc[:k]
    return torch.from_numpy(nbr), torch.from_numpy(val)


def covis_targets(items: torch.Tensor, valid: torch.Tensor, b: torch.Tensor, t: torch.Tensor, nbr: torch.Tensor,
                  val: torch.Tensor, anchors: int) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """What the covisitation source would recommend after position (b, t), as a
    distribution: the lists of the items at t, t-1, ..., t-anchors+1, each score divided
    by 1 + steps back, normalised to sum 1 per position (all 0 where no anchor has a
    list). items [B, L] long, valid [B, L] bool, b/t [P], nbr/val [N, K]
    -> item rows [P, anchors * K], weights [P, anchors * K]."""
    cols, ws = [], []
    for r in range(anchors):
        tr = (t - r).clamp(min=0)
        ok = ((t - r) >= 0) & valid[b, tr]  # [P]
        a = items[b, tr]  # [P]
        cols.append(nbr[a])
        ws.append(val[a] * ok[:, None].float() / (1.0 + r))
    idx, w = torch.cat(cols, 1), torch.cat(ws, 1)  # [P, R*K]
    return idx, w / w.sum(1, keepdim=True).clamp(min=1e-12)


def heaviest(idx: torch.Tensor, w: torch.Tensor, k: int) -> torch.Tensor:
    """The k item rows with the most teacher weight over the batch (idx, w [P, M]): the
    ones the sampled softmax adds to its candidates, so a batch's candidates grow by at
    most k, not by every position's lists (P x M rows; 12,800 x 150 at batch 64)."""
    ok = w > 0
    items, inv = torch.unique(idx[ok], return_inverse=True)
    total = torch.zeros(len(items), dtype=w.dtype, device=w.device).index_add_(0, inv, w[ok])
    return items[total.topk(min(k, len(items))).indices]


@dataclass
class Trainer:
    """One night's training: the data, the model and the optimiser, one epoch at a time.

    Every epoch visits every window of every training user (recsys.model.data.windows),
    so each transition is a training position once per epoch. Catalogs up to
    train.full_softmax_max_items use a full softmax over every item, with the item
    table recomputed with gradients each step (the user tower reads the same table, as
    SASRec shares its embeddings); larger ones a logQ-corrected sampled softmax over the
    batch's targets plus uniform negatives, reading a table refreshed each epoch.
    """

    cfg: Config
    bundle: Bundle
    seqs: Sequences
    train_wins: np.ndarray  # [W, 4] (row, start, end, first counted position)
    val_rows: np.ndarray  # [V] users whose last val_tail_steps steps are held out
    target_freq: np.ndarray  # [N] share of training targets (logQ)
    opt: torch.optim.Optimizer
    rng: np.random.Generator
    full_softmax: bool
    table: torch.Tensor | None = None  # [N, d] detached item table (sampled mode, validation)
    bias: torch.Tensor | None = None  # [N]
    positions: int = 0
    steps: int = 0
    # Exponential moving average of the trainable weights (train.ema_decay > 0): what
    # validation scores and what is saved. name -> tensor of the parameter's shape.
    ema: dict[str, torch.Tensor] | None = None
    # Small data (train.refit_max_users): every user validated, a second model follows.
    refit_after: bool = False
    # train.covis_distill > 0: the co-visitation lists, neighbours [N, K] and scores [N, K].
    covis: tuple[torch.Tensor, torch.Tensor] | None = None
    distill: float = 0.0  # its weight in each position's target (covis_distill)
    # The softmax's matmuls: bf16 where train.mixed_precision and the device multiplies
    # bf16 natively (CUDA; CPUs with AVX-512 BF16 or AMX), else fp32 (matmul_dtype()).
    matmul_dtype: torch.dtype = torch.float32

    @property
    def n_items(self) -> int:
        return len(self.bundle.item_ids)

    objective: str = "next_item"

    def horizon(self) -> float:
        return self.cfg.train.target_horizon_days if self.objective == "horizon" else 0.0

    def length_pool(self) -> int:
        """train.length_pool, None resolved by the softmax: batches by length (50) where
        the sampled softmax leaves the transformer most of a step, random (0) with the full
        one (docs/benchmarks.md, "Batches cut by length")."""
        pool = self.cfg.train.length_pool
        return pool if pool is not None else (0 if self.full_softmax else 50)

    def refresh_table(self) -> None:
        self.table, self.bias = self.bundle.item_table()

    def start_average(self) -> None:
        if self.cfg.train.ema_decay > 0:
            self.ema = {n: p.detach().clone() for n, p in self.bundle.model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update_average(self) -> None:
        if self.ema is None:
            return
        for n, p in self.bundle.model.named_parameters():
            if n in self.ema:
                self.ema[n].lerp_(p.detach(), 1.0 - self.cfg.train.ema_decay)

    @contextlib.contextmanager
    def averaged(self):  # type: ignore[no-untyped-def]
        """The model with the averaged weights inside the block, the trained ones after."""
        if self.ema is None:
            yield
            return
        params = dict(self.bundle.model.named_parameters())
        live = {n: params[n].detach().clone() for n in self.ema}
        with torch.no_grad():
            for n, v in self.ema.items():
                params[n].copy_(v)
        try:
            yield
        finally:
            with torch.no_grad():
                for n, v in live.items():
                    params[n].copy_(v)

    def step_loss(self, wins: np.ndarray) -> torch.Tensor | None:
        tc, model, dev = self.cfg.train, self.bundle.model, self.bundle.device
        items, types, ts, valid = (t.to(dev) for t in pad_windows(self.seqs, wins))
        with _autocast(dev, tc.mixed_precision):
            if self.full_softmax:
                table, bias = self.bundle.item_vectors(torch.arange(self.n_items))  # [N, d], [N] with grads
                inp = table[items]
            else:
                assert self.table is not None
                inp = self.table[items]
            states = model.user(inp, types, gap_buckets(ts, valid), valid)  # [B, L, d]
        b, t, j = (torch.from_numpy(x).to(dev) for x in _target_positions(valid, ts, tc.positions_per_step,
                                                                            self.horizon(), self.rng, wins[:, 3]))  # fmt: skip
        if len(b) == 0:
            return None
        q, y = states[b, t], items[b, j]  # [P, d], [P]
        self.positions += len(y)
        soft = None
        if self.covis is not None:
            soft = covis_targets(items, valid, b, t, *self.covis, self.cfg.retrieve.covis_anchors)  # [P, R*K] x 2
        if self.full_softmax:  # logits [P, N], built a chunk of rows at a time
            cols, w = distill_targets(y, soft, self.distill)
            return softmax_xent(q.float(), table.float(), bias.float(), cols, w, tc.temperature, self.matmul_dtype)
        negs = torch.from_numpy(self.rng.integers(0, self.n_items, size=tc.n_uniform_negatives)).to(dev)
        parts = [y, negs] + ([heaviest(*soft, tc.n_uniform_negatives)] if soft is not None else [])
        cand = torch.unique(torch.cat(parts))  # sorted [C]
        with _autocast(dev, tc.mixed_precision):
            cvec, cbias = self.bundle.item_vectors(cand)  # [C, d], [C]; grads into the item tower
        cbias = cbias.float()  # [C]; logits [P, C] = q @ cvec^T / temperature + cbias
        if tc.logq_correction:
            expected = len(y) * self.target_freq[cand.cpu().numpy()] + tc.n_uniform_negatives / self.n_items
            cbias = cbias - torch.from_numpy(np.log(np.maximum(expected, 1e-12))).float().to(dev)
        if soft is not None:
            # Teacher items outside the candidates drop out; each row is renormalised.
            at = torch.searchsorted(cand, soft[0]).clamp(max=len(cand) - 1)  # [P, M]
            w = soft[1] * (cand[at] == soft[0]).float()
            soft = (at, w / w.sum(1, keepdim=True).clamp(min=1e-12))
        cols, w = distill_targets(torch.searchsorted(cand, y), soft, self.distill)
        return softmax_xent(q.float(), cvec.float(), cbias, cols, w, tc.temperature, self.matmul_dtype)

    def epoch(self, epoch: int, deadline: float | None) -> tuple[float | None, bool]:
        """One pass over every training window; returns (mean loss, hit the deadline)."""
        self.bundle.model.train()
        if not self.full_softmax:
            self.refresh_table()
        tc = self.cfg.train
        batches = length_batches(self.train_wins, tc.batch_size, self.rng, self.length_pool())
        losses: list[float] = []
        bar = Progress(len(self.train_wins), f"train epoch {epoch}", "windows", every_s=15)
        for batch in batches:
            bar.update(len(batch))
            loss = self.step_loss(self.train_wins[batch])
            if loss is None:
                continue
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.bundle.model.parameters(), 5.0)
            self.opt.step()
            self.update_average()
            losses.append(float(loss.item()))
            self.steps += 1
            bar.postfix["loss"] = float(np.mean(losses[-20:]))
            if deadline is not None and time.time() > deadline:
                bar.close()
                return (float(np.mean(losses)) if losses else None), True
        bar.close()
        return (float(np.mean(losses)) if losses else None), False

    def validate(self) -> float | None:
        """Recall@20 of each validation user's held-out tail (new items only), from the
        state before it, over the whole catalog with the input history masked; the
        averaged weights when train.ema_decay > 0."""
        if not len(self.val_rows):
            return None
        with self.averaged():
            return self._validate()

    def _validate(self) -> float | None:
        tail = self.cfg.train.val_tail_steps
        self.refresh_table()
        assert self.table is not None and self.bias is not None
        u = self.bundle.user_vectors(self.seqs, self.table, self.cfg.model.max_seq_len, rows=self.val_rows,
                                     drop_last=tail)  # fmt: skip
        n_items = self.table.shape[0]
        # Scored in chunks of users: [V, N] at once was 5.3 GB for 10k validation users
        # x 132k items (the train stage's peak); a chunk is at most ~256 MB.
        chunk = max(1, (256 << 20) // (4 * n_items))
        vals = []
        for a in range(0, len(self.val_rows), chunk):
            scores = u[a : a + chunk] @ self.table.T / self.cfg.train.temperature + self.bias  # [c, N]
            targets = []
            for j, r in enumerate(self.val_rows[a : a + chunk]):
                hist = self.seqs.row(int(r))[0]
                scores[j, torch.from_numpy(hist[:-tail]).to(scores.device)] = -1e9
                targets.append(set(hist[-tail:].tolist()) - set(hist[:-tail].tolist()))
            top = scores.topk(min(20, n_items), dim=1).indices.cpu().numpy()  # [c, 20]
            vals += [len(t & set(top[j].tolist())) / min(len(t), 20) for j, t in enumerate(targets) if t]
        return float(np.mean(vals)) if vals else None


def resolve_objective(cfg: Config, rd: RunDir, split: str) -> str:
    """train.objective, with auto resolved from how the aggregate stage labelled the
    ranker: by days (users come back daily) -> horizon, else next_item."""
    if cfg.train.objective != "auto":
        return cfg.train.objective
    meta = rd.path("features", split, "split.json")
    by = jsonio.read(meta).get("rank_labels_by") if meta.is_file() else None
    return "horizon" if by == "days" else "next_item"


def covis_distill(cfg: Config, objective: str) -> float:
    """train.covis_distill, with None resolved by the objective (0.3 for next_item)."""
    if cfg.train.covis_distill is not None:
        return cfg.train.covis_distill
    return 0.3 if objective == "next_item" else 0.0


def validation_rows(cfg: Config, lengths: np.ndarray, rng: np.random.Generator, every_user: bool = False,
                    none: bool = False) -> np.ndarray:  # fmt: skip
    """Sorted rows [V] of the users whose last train.val_tail_steps steps validate: of
    those with at least that many + 2 steps, every one (every_user), none, or a
    val_fraction sample of at most max_val_users. lengths [U] steps per user."""
    tc = cfg.train
    eligible = np.flatnonzero(lengths >= tc.val_tail_steps + 2)
    n_val = 0 if none else len(eligible) if every_user else int(len(eligible) * tc.val_fraction)
    if tc.max_val_users and not every_user:
        n_val = min(n_val, tc.max_val_users)
    return np.sort(rng.choice(eligible, size=n_val, replace=False)) if n_val else np.zeros(0, dtype=np.int64)


def _setup(cfg: Config, rd: RunDir, refit: bool = False,
           member: int = 0) -> tuple[Trainer, dict[str, Any], Catalog, str]:  # fmt: skip
    """Data, model (warm-started when possible), encoder cache, splits, optimiser.
    refit: no validation users (the second model of small data, see train_member)."""
    torch.manual_seed(cfg.train.seed)
    rng = np.random.default_rng(cfg.train.seed)
    device = torch_device(cfg.train.device)
    split = cfg.model_split()
    catalog = load_catalog(rd.require("features", "catalog"))
    seqs = load_sequences(rd.require("features", split, "sequences"), catalog.index(), type_names(cfg))
    counts = np.bincount(seqs.items, minlength=len(catalog.ids)).astype(np.float64)  # [N]
    model, warm_info = _warm_model(cfg, rd, catalog, counts, device, member)
    enc = model.item.encoder
    t_cache = time.time()
    # CPU: cache what the frozen part of the encoder computes, once per item. GPU with
    # the whole encoder trainable: run it on the batch's texts every step.
    cache = PrefixCache(enc, catalog.texts, store=TextStore(cfg.cache_dir() / "text", enc)) if enc.split > 0 else None
    bundle = Bundle(model, catalog.ids, type_names(cfg), device, cache=cache, texts=catalog.texts)
    small = len(seqs) <= cfg.train.refit_max_users
    val_rows = validation_rows(cfg, seqs.lengths(), rng, every_user=small, none=refit)
    wins = _train_windows(cfg, seqs, val_rows)
    full = len(catalog.ids) <= cfg.train.full_softmax_max_items and enc.split > 0
    objective = resolve_objective(cfg, rd, split)
    trainer = Trainer(
        cfg=cfg, bundle=bundle, seqs=seqs, train_wins=wins, val_rows=val_rows,
        target_freq=counts / max(counts.sum(), 1.0), opt=_optimiser(cfg, model), rng=rng, full_softmax=full,
        objective=objective, refit_after=small and not refit and len(val_rows) > 0,
        matmul_dtype=matmul_dtype(cfg, device),
    )  # fmt: skip
    distill = covis_distill(cfg, objective)
    if distill > 0:
        trainer.distill = distill
        trainer.covis = tuple(x.to(device) for x in covis_table(rd.require("features", split, "covisitation"),
                                                                  catalog.index(), cfg.retrieve.covis_neighbors))  # type: ignore[assignment]  # fmt: skip
    trainer.start_average()
    log.info(
        "train: split=%s, %d users (%d validation), %d windows, %d items (%d with id rows), device=%s, "
        "encoder layers trained=%d/%d, %s softmax (%s matmuls), objective=%s, co-visitation distilled at %.2f, "
        "encoder cache %.1fs",
        split, len(seqs), len(val_rows), len(wins), len(catalog.ids), int((model.item.id_index > 0).sum()), device,
        enc.n_train, len(enc.bert.encoder.layer), "full" if full else "sampled",
        str(trainer.matmul_dtype).removeprefix("torch."), objective, distill, time.time() - t_cache,
    )  # fmt: skip
    return trainer, warm_info, catalog, split


def _warm_model(cfg: Config, rd: RunDir, catalog: Catalog, counts: np.ndarray, device: torch.device,
                member: int) -> tuple[TwoTower, dict[str, Any]]:  # fmt: skip
    """The model on `device`, warm-started from the previous night's member `member` (or
    its model.pt) when train.warm_start and one exists. A previous model that cannot be
    read is logged and skipped: tonight trains from the pretrained encoder instead."""
    model = build_model(cfg, catalog, counts, device)
    warm_info: dict[str, Any] = {"from": None}
    prev = find_previous_model(cfg, rd) if cfg.train.warm_start else None
    if prev is not None and (prev.parent / member_file(member)).is_file():
        prev = prev.parent / member_file(member)
    if prev is not None:
        try:
            warm_info = warm_start(model, catalog.ids, prev)
        except (RuntimeError, KeyError, ValueError, OSError) as e:
            warm_info = {"from": str(prev), "error": repr(e)}
            log.warning("train: warm start from %s failed (%s); training from the pretrained encoder", prev, e)
    return model.to(device), warm_info


def _train_windows(cfg: Config, seqs: Sequences, val_rows: np.ndarray) -> np.ndarray:
    """[W, 4] training windows (recsys.model.data.windows): every step of the other
    users, and all but the last train.val_tail_steps steps of the validation users."""
    is_val = np.zeros(len(seqs), dtype=bool)
    is_val[val_rows] = True
    L, ctx = cfg.model.max_seq_len, cfg.train.window_context
    wins = np.concatenate([windows(seqs, np.flatnonzero(~is_val), L, min_context=ctx),
                           windows(seqs, val_rows, L, drop_last=cfg.train.val_tail_steps, min_context=ctx)])  # fmt: skip
    if len(wins) == 0:
        raise ValueError("no user has two or more positive events: nothing to train on")
    return wins


def _optimiser(cfg: Config, model: TwoTower) -> torch.optim.Optimizer:
    """AdamW over the trainable weights: the towers at train.lr, the encoder's trainable
    layers (none on CPU by default) at train.encoder_lr."""
    enc_params = [p for p in model.item.encoder.parameters() if p.requires_grad]
    enc_ids = {id(p) for p in enc_params}
    other = [p for p in model.parameters() if p.requires_grad and id(p) not in enc_ids]
    groups = [{"params": other, "lr": cfg.train.lr}]
    if enc_params:
        groups.append({"params": enc_params, "lr": cfg.train.encoder_lr})
    return torch.optim.AdamW(groups, weight_decay=cfg.train.weight_decay)


def ensemble_size(cfg: Config, rd: RunDir) -> int:
    """How many models tonight trains (train.ensemble_members, where the split has at
    most train.ensemble_max_users users; else one)."""
    tc = cfg.train
    if tc.ensemble_members == 1:
        return 1
    from recsys.shards import num_rows

    users = num_rows(rd.require("features", cfg.model_split(), "sequences"))
    return tc.ensemble_members if users <= tc.ensemble_max_users else 1


def member_config(cfg: Config, member: int, members: int) -> Config:
    """Member k of the ensemble: seed train.seed + k and an equal share of a fixed
    time budget. Member 0 is the single model's configuration."""
    tc = cfg.train
    budget = None if tc.time_budget_s is None else tc.time_budget_s / members
    return cfg.model_copy(update={"train": tc.model_copy(update={"seed": tc.seed + member, "time_budget_s": budget})})


def another_member_fits(cfg: Config, seconds: list[float]) -> bool:
    """With a fixed train.time_budget_s the members share it, so each one fits. With the
    automatic budget each member sets its own, and the whole ensemble is held to
    train.max_auto_budget_s: one more member is trained only when one more of the
    slowest so far still ends inside it (small data: all of them; a data set whose one
    model takes most of that budget: one model, not M times the night's training)."""
    if cfg.train.time_budget_s is not None:
        return True
    return sum(seconds) + max(seconds) <= cfg.train.max_auto_budget_s


def member_file(member: int) -> str:
    return "model.pt" if member == 0 else f"member_{member}.pt"


def train_model(cfg: Config, rd: RunDir) -> dict[str, Any]:
    """Fit the two-tower model(s) on the models' split, each keeping its best validation
    epoch. An ensemble's members differ by seed; embed serves the mean of their scores."""
    t_start = time.time()
    members = ensemble_size(cfg, rd)
    infos: list[dict[str, Any]] = []
    for k in range(members):
        if k and not another_member_fits(cfg, [m["seconds"] for m in infos]):
            log.info("train: ensemble stopped at %d of %d members: one more (~%.0fs) would take training past "
                     "train.max_auto_budget_s (%.0fs)", k, members, max(m["seconds"] for m in infos),
                     cfg.train.max_auto_budget_s)  # fmt: skip
            break
        infos.append(train_member(member_config(cfg, k, members), rd, k))
    members = len(infos)
    _record_members(rd, members)
    info = {**infos[0], "seconds": round(time.time() - t_start, 1), "members": members}
    if members > 1:
        keys = (
            "seed",
            "best_epoch",
            "best_val_recall@20",
            "steps",
            "stopped_by",
            "patience_epochs",
            "model_hash",
            "seconds",
        )
        info["member_runs"] = [{k: m[k] for k in keys} for m in infos]
        info["model_hash"] = hashlib.sha256("".join(m["model_hash"] for m in infos).encode()).hexdigest()[:16]
        log.info("train: %d members in %.1fs (best epochs %s)", members, info["seconds"],
                 [m["best_epoch"] for m in infos])  # fmt: skip
    return info


def train_member(cfg: Config, rd: RunDir, member: int = 0) -> dict[str, Any]:
    """Fit one model; keep the best validation epoch. Small data (at most
    train.refit_max_users users): every user's last steps validate, then a second model
    learns from every step for the chosen number of epochs."""
    t_start = time.time()
    tr, warm_info, catalog, split = _setup(cfg, rd, member=member)
    fit = _fit(cfg, tr)
    refit: dict[str, Any] = {}
    if tr.refit_after and fit["best_epoch"] > 0:
        t_refit = time.time()
        tr = _refit(cfg, rd, fit["best_epoch"], member)
        refit = {"refit_epochs": fit["best_epoch"], "refit_seconds": round(time.time() - t_refit, 1)}
        log.info("train: refit on every step for %d epochs in %.1fs", fit["best_epoch"], refit["refit_seconds"])
    model = tr.bundle.model
    model_hash = _save(cfg, rd, tr, catalog, split, member)
    elapsed = fit["loop_seconds"]
    info = {
        "seed": cfg.train.seed,
        "device": str(tr.bundle.device),
        "split": split,
        "users": len(tr.seqs),
        "val_users": fit["val_users"],
        "windows": len(tr.train_wins),
        "items": len(catalog.ids),
        "items_with_id_rows": int((model.item.id_index > 0).sum()),
        "encoder_layers_trained": model.item.encoder.n_train,
        "softmax": "full" if tr.full_softmax else "sampled",
        "objective": tr.objective,
        "covis_distill": tr.distill,
        "steps": fit["steps"],
        "positions": fit["positions"],
        "positions_per_s": round(fit["positions"] / elapsed, 1) if elapsed > 0 else None,
        **{k: fit[k] for k in ("time_budget_s", "loop_seconds", "stopped_by", "patience_epochs", "best_epoch",
                               "best_val_recall@20", "history")},
        **refit,
        "warm_start": warm_info,
        "model_hash": model_hash,
        "seconds": round(time.time() - t_start, 1),
    }  # fmt: skip
    log.info("train: done in %.1fs, %d steps, best epoch %d val recall@20=%s (%s, patience %d epochs)",
             info["seconds"], fit["steps"], fit["best_epoch"], fit["best_val_recall@20"], fit["stopped_by"],
             fit["patience_epochs"])  # fmt: skip
    return info


def _fit(cfg: Config, tr: Trainer) -> dict[str, Any]:
    """Epochs until the time budget, max_epochs or early stopping; the model is left
    with the best validation epoch's weights."""
    model = tr.bundle.model
    best = {"val_recall@20": tr.validate(), "epoch": 0}
    history: list[dict[str, Any]] = [{"epoch": 0, "val_recall@20": best["val_recall@20"], "loss": None}]
    with tr.averaged():
        best_state = copy.deepcopy(model.state_dict())
    log.info("train: epoch 0 (before training) val recall@20=%s", best["val_recall@20"])
    budget = cfg.train.time_budget_s
    t_loop = time.time()
    bad_epochs, stopped = 0, "max_epochs"
    for epoch in range(1, cfg.train.max_epochs + 1):
        t_ep = time.time()
        loss, out_of_time = tr.epoch(epoch, None if budget is None else t_loop + budget)
        if budget is None:
            # Scale the budget with the data: a number of epochs at the first epoch's pace.
            budget = min(cfg.train.max_auto_budget_s, max(60.0, cfg.train.auto_budget_epochs * (time.time() - t_ep)))
            log.info("train: epoch 1 took %.1fs; time budget %.0fs", time.time() - t_ep, budget)
        val = tr.validate()
        history.append({"epoch": epoch, "val_recall@20": val, "loss": loss, "seconds": round(time.time() - t_ep, 1)})
        log.info("train: epoch %d done in %.1fs, loss %s, val recall@20=%s", epoch, time.time() - t_ep, loss, val)
        if val is None or best["val_recall@20"] is None or val > best["val_recall@20"]:
            best = {"val_recall@20": val, "epoch": epoch}
            with tr.averaged():
                best_state = copy.deepcopy(model.state_dict())
            bad_epochs = 0
        else:
            bad_epochs += 1
        if out_of_time or time.time() - t_loop > budget:
            stopped = "time_budget"
            break
        if bad_epochs >= cfg.train.patience_epochs(tr.steps / epoch):
            stopped = "early_stopping"
            break
    model.load_state_dict(best_state)
    return {"val_users": len(tr.val_rows), "steps": tr.steps, "positions": tr.positions,
            "time_budget_s": round(budget, 1) if budget is not None else None,
            "loop_seconds": round(time.time() - t_loop, 1), "stopped_by": stopped, "best_epoch": best["epoch"],
            "patience_epochs": cfg.train.patience_epochs(tr.steps / max(len(history) - 1, 1)),
            "best_val_recall@20": best["val_recall@20"], "history": history}  # fmt: skip


def _refit(cfg: Config, rd: RunDir, epochs: int, member: int) -> Trainer:
    """A fresh model (same seed, same warm start) trained on every step for `epochs`."""
    tr, *_ = _setup(cfg, rd, refit=True, member=member)
    for epoch in range(1, epochs + 1):
        tr.epoch(epoch, None)
    with tr.averaged():
        state = copy.deepcopy(tr.bundle.model.state_dict())
    tr.bundle.model.load_state_dict(state)
    return tr


def _save(cfg: Config, rd: RunDir, tr: Trainer, catalog: Catalog, split: str, member: int) -> str:
    """model/model.pt (member k > 0: member_k.pt) + meta.json (member 0 writes it, with
    how many members there are); returns the weights' content hash."""
    out = rd.path("model")
    out.mkdir(parents=True, exist_ok=True)
    torch.save(tr.bundle.model.state_dict(), out / member_file(member))
    model_hash = hashlib.sha256((out / member_file(member)).read_bytes()).hexdigest()[:16]
    if member > 0:
        return model_hash
    enc = tr.bundle.model.item.encoder
    meta = {
        "item_ids": [str(x) for x in catalog.ids],
        "type_names": type_names(cfg),
        "encoder_path": enc.path,
        "encoder_layers_trained": enc.n_train,
        "dim": cfg.model.dim,
        "members": 1,  # train_model records how many were trained (_record_members)
        "split": split,
        "model_hash": model_hash,
    }
    jsonio.write(out / "meta.json", meta, indent=None)
    return model_hash


def _record_members(rd: RunDir, members: int) -> None:
    """meta.json says how many members embed reads; member files past them (a re-run
    of this date with fewer members) are removed."""
    out = rd.path("model")
    meta = jsonio.read(out / "meta.json")
    jsonio.write(out / "meta.json", {**meta, "members": members}, indent=None)
    for f in out.glob("member_*.pt"):
        if int(f.stem.split("_")[1]) >= members:
            f.unlink()


def load_bundles(cfg: Config, rd: RunDir, device: torch.device | None = None) -> list[Bundle]:
    """Every member of this run's model (one unless an ensemble was trained)."""
    meta = json.loads((rd.require("model") / "meta.json").read_text())
    return [load_bundle(cfg, rd, device, member=k) for k in range(int(meta.get("members", 1)))]


def load_bundle(cfg: Config, rd: RunDir, device: torch.device | None = None, member: int = 0) -> Bundle:
    """Rebuild the trained model of this run from model/ (for embed and evaluation)."""
    device = device or torch_device(cfg.train.device)
    model_dir = rd.require("model")
    meta = json.loads((model_dir / "meta.json").read_text())
    state = torch.load(model_dir / member_file(member), map_location="cpu", weights_only=True)
    encoder = TextEncoder(meta["encoder_path"], encoder_layers_to_train(cfg, device), cfg.model.max_text_len)
    model = make_two_tower(cfg, encoder, state["item.id_index"], meta["dim"], len(meta["type_names"]))
    model.load_state_dict(state)
    model.to(device).eval()
    return Bundle(model, np.array(meta["item_ids"], dtype=object), meta["type_names"], device)
