"""Fine-tune the two-tower model on the train split's sequences.

Objective: next-item prediction at every position of each user's sequence (SASRec-style)
with a sampled softmax over the batch's targets plus uniform random negatives, corrected
by log of each candidate's expected count in the sample (logQ), so popular items are not
over-penalised for appearing as negatives more often.
Validation: a random val_fraction of users keep their last val_tail_steps steps out of
training; Recall@20 of those (new) items over the whole catalog, history masked, from
the state before the tail. Several targets per user and a multi-step horizon match the
training objective and make the signal less noisy than one next item. The best epoch is
kept (early stopping).
Training stops at train.time_budget_s, max_epochs or early stopping, whichever first.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from recsys import jsonio
from recsys.config import Config
from recsys.device import torch_device
from recsys.model.data import Catalog, Sequences, load_catalog, load_sequences, pad_batch
from recsys.model.encoder import PrefixCache, TextEncoder
from recsys.model.towers import TwoTower, gap_buckets
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
                     rows: np.ndarray | None = None, drop_last: int = 0) -> torch.Tensor:  # fmt: skip
        """User-tower state after each user's last step: [U, d] (no grad)."""
        was = self.model.training
        self.model.eval()
        rows = np.arange(len(seqs)) if rows is None else rows
        out = []
        for i in range(0, len(rows), batch_size):
            r = rows[i : i + batch_size]
            items, types, ts, valid = (t.to(self.device) for t in pad_batch(seqs, r, max_len, drop_last))
            with _autocast(self.device):
                states = self.model.user(table[items], types, gap_buckets(ts, valid), valid)
            last = valid.sum(1).clamp(min=1) - 1
            out.append(states[torch.arange(len(r), device=self.device), last].float())
        self.model.train(was)
        return torch.cat(out) if out else torch.zeros(0, table.shape[1], device=self.device)


def _autocast(device: torch.device):  # type: ignore[no-untyped-def]
    # bf16 autocast on CUDA (mixed precision); a no-op context on CPU.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def build_model(cfg: Config, catalog: Catalog, item_counts: np.ndarray, device: torch.device) -> TwoTower:
    n_train = cfg.model.train_encoder_layers_gpu if device.type == "cuda" else cfg.model.train_encoder_layers_cpu
    encoder = TextEncoder(cfg.model.encoder_path, n_train, cfg.model.max_text_len)
    warm = item_counts >= cfg.model.id_embedding_min_count
    id_index = np.zeros(len(catalog.ids), dtype=np.int64)
    id_index[warm] = np.arange(1, int(warm.sum()) + 1)
    return TwoTower(
        encoder,
        cfg.model.dim,
        torch.from_numpy(id_index),
        cfg.model.max_seq_len,
        len(type_names(cfg)),
        cfg.model.user_layers,
        cfg.model.user_heads,
        cfg.model.dropout,
    )


def type_names(cfg: Config) -> list[str]:
    return sorted(cfg.events.weights)


def find_previous_model(cfg: Config, rd: RunDir) -> Path | None:
    """Newest model of an earlier logical date under the same work root (warm start)."""
    runs = Path(cfg.paths.work_root) / "runs"
    if not runs.is_dir():
        return None
    best: tuple[str, float, Path] | None = None
    for p in runs.glob("*/*/model/model.pt"):
        date = p.parts[-4]
        if date < rd.date.isoformat():
            key = (date, p.stat().st_mtime, p)
            if best is None or key[:2] > best[:2]:
                best = key
    return best[2] if best else None


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


def _positions_and_targets(
    states: torch.Tensor,
    items: torch.Tensor,
    ts: torch.Tensor,
    valid: torch.Tensor,
    n_pos: int,
    horizon_days: float,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample up to n_pos positions (b, t) that have a later step and pick each one's
    target: the next step when horizon_days == 0, else a uniform step in (t, t_h] where
    t_h is the last step within horizon_days of t (at least t + 1).
    states [B, L, d], items/ts [B, L] long, valid [B, L] bool -> q [P, d], y [P]."""
    v = valid.cpu().numpy()
    lens = v.sum(1)  # [B]
    has_next = np.zeros_like(v)
    has_next[:, :-1] = v[:, 1:]
    b_idx, t_idx = np.nonzero(has_next)
    if len(b_idx) == 0:
        return states.new_zeros((0, states.shape[-1])), items.new_zeros(0)
    if len(b_idx) > n_pos:
        pick = rng.choice(len(b_idx), n_pos, replace=False)
        b_idx, t_idx = b_idx[pick], t_idx[pick]
    if horizon_days > 0:
        ts_np = ts.cpu().numpy()
        h = int(horizon_days * 86400)
        hi = np.array([np.searchsorted(ts_np[b, : lens[b]], ts_np[b, t] + h, side="right") - 1
                       for b, t in zip(b_idx, t_idx, strict=True)])  # fmt: skip
        hi = np.maximum(hi, t_idx + 1)
        j_idx = rng.integers(t_idx + 1, hi + 1)
    else:
        j_idx = t_idx + 1
    bt = torch.from_numpy(b_idx).to(items.device)
    return states[bt, torch.from_numpy(t_idx).to(items.device)], items[bt, torch.from_numpy(j_idx).to(items.device)]


def train_model(cfg: Config, rd: RunDir) -> dict[str, Any]:
    t_start = time.time()
    torch.manual_seed(cfg.train.seed)
    rng = np.random.default_rng(cfg.train.seed)
    device = torch_device(cfg.train.device)
    split = "train" if cfg.evaluate.holdout_days > 0 else "full"
    catalog = load_catalog(rd.require("features", "catalog"))
    seqs = load_sequences(rd.require("features", split, "sequences"), catalog.index(), type_names(cfg))
    n_items = len(catalog.ids)
    counts = np.bincount(seqs.items, minlength=n_items).astype(np.float64)  # [N]
    model = build_model(cfg, catalog, counts, device)
    warm_info: dict[str, Any] = {"from": None}
    if cfg.train.warm_start:
        prev = find_previous_model(cfg, rd)
        if prev is not None:
            try:
                warm_info = warm_start(model, catalog.ids, prev)
            except (RuntimeError, KeyError, ValueError, OSError) as e:
                # A broken previous model must not block tonight: train from scratch.
                warm_info = {"from": str(prev), "error": repr(e)}
                log.warning("train: warm start from %s failed (%s); training from the pretrained encoder", prev, e)
    model.to(device)
    enc = model.item.encoder
    t_cache = time.time()
    # CPU: cache what the frozen part of the encoder computes, once per item. GPU with
    # the whole encoder trainable: run it on the batch's texts every step.
    cache = PrefixCache(enc, catalog.texts) if enc.split > 0 else None
    bundle = Bundle(model, catalog.ids, type_names(cfg), device, cache=cache, texts=catalog.texts)
    log.info(
        "train: %d users, %d items (%d with id rows), device=%s, encoder layers trained=%d/%d, prefix cache %.1fs",
        len(seqs), n_items, int((model.item.id_index > 0).sum()), device, enc.n_train,
        len(enc.bert.encoder.layer), time.time() - t_cache,
    )  # fmt: skip

    lengths = seqs.lengths()
    tail = cfg.train.val_tail_steps
    eligible = np.flatnonzero(lengths >= tail + 2)
    n_val = int(len(eligible) * cfg.train.val_fraction)
    val_rows = rng.choice(eligible, size=n_val, replace=False) if n_val else np.zeros(0, dtype=np.int64)
    is_val = np.zeros(len(seqs), dtype=bool)
    is_val[val_rows] = True
    train_rows = np.flatnonzero(lengths >= 2)
    if len(train_rows) == 0:
        raise ValueError("no user has two or more positive events: nothing to train on")
    # Targets' frequency for the logQ correction: [N] probability of being a target.
    target_freq = counts / max(counts.sum(), 1.0)

    enc_params = [p for p in enc.parameters() if p.requires_grad]
    enc_ids = {id(p) for p in enc_params}
    other = [p for p in model.parameters() if p.requires_grad and id(p) not in enc_ids]
    groups = [{"params": other, "lr": cfg.train.lr}]
    if enc_params:
        groups.append({"params": enc_params, "lr": cfg.train.encoder_lr})
    opt = torch.optim.AdamW(groups, weight_decay=cfg.train.weight_decay)
    scaler_ctx = _autocast(device)

    def validate(table: torch.Tensor, bias: torch.Tensor) -> float:
        if not len(val_rows):
            return float("nan")
        u = bundle.user_vectors(seqs, table, cfg.model.max_seq_len, rows=val_rows, drop_last=tail)
        scores = u @ table.T / cfg.train.temperature + bias  # [V, N]
        targets = []
        for j, r in enumerate(val_rows):  # mask the input history; targets = the new tail items
            hist = seqs.row(int(r))[0]
            scores[j, torch.from_numpy(hist[:-tail]).to(device)] = -1e9
            targets.append(set(hist[-tail:].tolist()) - set(hist[:-tail].tolist()))
        top = scores.topk(min(20, scores.shape[1]), dim=1).indices.cpu().numpy()  # [V, 20]
        vals = [len(t & set(top[j].tolist())) / min(len(t), 20) for j, t in enumerate(targets) if t]
        return float(np.mean(vals)) if vals else float("nan")

    B = cfg.train.batch_size
    steps_per_epoch = max(1, math.ceil(len(train_rows) / B))
    history: list[dict[str, float]] = []
    table, bias = bundle.item_table()
    best = {"val_recall@20": validate(table, bias), "epoch": 0}
    history.append({"epoch": 0, "val_recall@20": best["val_recall@20"], "loss": float("nan")})
    best_state = copy.deepcopy(model.state_dict())
    log.info("train: epoch 0 (before training) val recall@20=%.4f", best["val_recall@20"])
    bad_epochs, step, samples, stopped = 0, 0, 0, "max_epochs"
    t_loop = time.time()
    t_log = t_loop
    for epoch in range(1, cfg.train.max_epochs + 1):
        model.train()
        order = rng.permutation(train_rows)
        losses = []
        for s in range(steps_per_epoch):
            rows = order[s * B : (s + 1) * B]
            if len(rows) == 0:
                break
            items, types, ts, valid = pad_batch(seqs, rows, cfg.model.max_seq_len)
            # A val user's last `tail` steps are its validation targets: never train on them.
            vmask = is_val[rows]
            if vmask.any():
                n_valid = valid.sum(1, keepdim=True)  # [B, 1]
                pos = torch.arange(valid.shape[1]).unsqueeze(0)  # [1, L]
                in_tail = (pos >= n_valid - tail) & torch.from_numpy(vmask).unsqueeze(1)
                valid &= ~in_tail
            items, types, ts, valid = items.to(device), types.to(device), ts.to(device), valid.to(device)
            with scaler_ctx:
                states = model.user(table[items], types, gap_buckets(ts, valid), valid)  # [B, L, d]
            q, y = _positions_and_targets(states, items, ts, valid, cfg.train.positions_per_step,
                                          cfg.train.target_horizon_days, rng)  # fmt: skip
            if len(y) == 0:
                continue
            negs = torch.from_numpy(rng.integers(0, n_items, size=cfg.train.n_uniform_negatives)).to(device)
            cand = torch.unique(torch.cat([y, negs]))  # sorted [C]
            with scaler_ctx:
                cvec, cbias = bundle.item_vectors(cand)  # [C, d], [C]; grads into the item tower
                logits = (q.float() @ cvec.float().T) / cfg.train.temperature + cbias.float()  # [P, C]
            if cfg.train.logq_correction:
                expected = len(y) * target_freq[cand.cpu().numpy()] + cfg.train.n_uniform_negatives / n_items
                logits = logits - torch.from_numpy(np.log(np.maximum(expected, 1e-12))).float().to(device)
            labels = torch.searchsorted(cand, y)
            loss = F.cross_entropy(logits, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            losses.append(float(loss.item()))
            step += 1
            samples += len(y)
            now = time.time()
            if now - t_log > 15:
                log.info(
                    "train: epoch %d step %d/%d loss %.4f (%.0f positions/s, %.0fs of %.0fs budget)",
                    epoch, s + 1, steps_per_epoch, np.mean(losses[-20:]), samples / (now - t_loop),
                    now - t_loop, cfg.train.time_budget_s,
                )  # fmt: skip
                t_log = now
            if now - t_loop > cfg.train.time_budget_s:
                stopped = "time_budget"
                break
        # Refresh the (detached) item table the user tower reads, then validate.
        table, bias = bundle.item_table()
        val = validate(table, bias)
        history.append(
            {"epoch": epoch, "val_recall@20": val, "loss": float(np.mean(losses)) if losses else float("nan")}
        )
        log.info("train: epoch %d done, loss %.4f, val recall@20=%.4f", epoch, history[-1]["loss"], val)
        if math.isnan(val) or val > best["val_recall@20"]:
            best = {"val_recall@20": val, "epoch": epoch}
            best_state = copy.deepcopy(model.state_dict())
            bad_epochs = 0
        else:
            bad_epochs += 1
        if stopped == "time_budget":
            break
        if bad_epochs >= cfg.train.early_stopping_patience:
            stopped = "early_stopping"
            break
    model.load_state_dict(best_state)
    out = rd.path("model")
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "model.pt")
    model_hash = hashlib.sha256((out / "model.pt").read_bytes()).hexdigest()[:16]
    meta = {
        "item_ids": [str(x) for x in catalog.ids],
        "type_names": type_names(cfg),
        "encoder_path": enc.path,
        "encoder_layers_trained": enc.n_train,
        "dim": cfg.model.dim,
        "split": split,
        "model_hash": model_hash,
    }
    jsonio.write(out / "meta.json", meta, indent=None)
    elapsed = time.time() - t_loop
    info = {
        "device": str(device),
        "users": len(seqs),
        "train_users": len(train_rows),
        "val_users": len(val_rows),
        "items": n_items,
        "items_with_id_rows": int((model.item.id_index > 0).sum()),
        "encoder_layers_trained": enc.n_train,
        "steps": step,
        "positions": samples,
        "positions_per_s": round(samples / elapsed, 1) if elapsed > 0 else None,
        "loop_seconds": round(elapsed, 1),
        "stopped_by": stopped,
        "best_epoch": best["epoch"],
        "best_val_recall@20": best["val_recall@20"],
        "history": history,
        "warm_start": warm_info,
        "model_hash": model_hash,
        "seconds": round(time.time() - t_start, 1),
    }
    log.info("train: done in %.1fs, %d steps, best epoch %d val recall@20=%.4f (%s)",
             info["seconds"], step, best["epoch"], best["val_recall@20"], stopped)  # fmt: skip
    return info


def load_bundle(cfg: Config, rd: RunDir, device: torch.device | None = None) -> Bundle:
    """Rebuild the trained model of this run from model/ (for embed and evaluation)."""
    device = device or torch_device(cfg.train.device)
    model_dir = rd.require("model")
    meta = json.loads((model_dir / "meta.json").read_text())
    state = torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True)
    n_train = cfg.model.train_encoder_layers_gpu if device.type == "cuda" else cfg.model.train_encoder_layers_cpu
    encoder = TextEncoder(meta["encoder_path"], n_train, cfg.model.max_text_len)
    model = TwoTower(
        encoder,
        meta["dim"],
        state["item.id_index"],
        cfg.model.max_seq_len,
        len(meta["type_names"]),
        cfg.model.user_layers,
        cfg.model.user_heads,
        cfg.model.dropout,
    )
    model.load_state_dict(state)
    model.to(device).eval()
    return Bundle(model, np.array(meta["item_ids"], dtype=object), meta["type_names"], device)
