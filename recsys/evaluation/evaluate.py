"""Offline evaluation against baselines computed in the same run, and the publish gate.

Protocols (evaluate.protocol): `time` holds out the last holdout_days (targets: every
positive item of a user in that window), `leave_last` holds out each user's last
leave_last_n steps. Models and the ranker were fitted on the history before the
holdout (features/train and the rank split inside it). Every method ranks items from
that history alone for the same users (those with history and a target they may still
be shown), and every list skips the same items: those events.exclude_policy excludes
and those not servable (a baseline that also skipped the whole history could never hit
a repeat purchase of a viewed item, which the policy `purchased` leaves to be shown):
- baselines:  popularity; last_item_cooc (what followed the user's last item); EASE
              (closed form, catalogs up to evaluate.ease_max_items)
- sources:    every candidate source alone (two_tower, covisitation, ...)
- blended:    the sources fused by reciprocal rank (the ranker's fallback)
- ranked:     the learned ranker's order (what the homepage is built from)
- homepage:   the re-ranked page, flattened in reading order (what is published)
Metrics: Recall, NDCG, MRR, hit rate at each K with 95% bootstrap intervals; coverage@10
and long-tail share@10; a cold-start slice (targets the model knows by text alone: fewer
than model.id_embedding_min_count training events). The gate compares gate_method with
the best baseline on gate_metric, and with the previous run.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from typing import Any

import numpy as np
import pandas as pd

from recsys import jsonio
from recsys.config import Config
from recsys.evaluation.metrics import catalog_coverage, intra_list_diversity, per_user_metrics, summarise
from recsys.evaluation.report import render_report
from recsys.features import Sequences, load_sequences
from recsys.rank import fallback_order, load_ranker, rank_candidates, ranker_input
from recsys.rerank import build_slates, flatten
from recsys.retrieve import SOURCES, Context, blend, generate_all, load_context
from recsys.rundir import RunDir

log = logging.getLogger(__name__)
BASELINES = ("popularity", "last_item_cooc", "ease")


class GateFailed(RuntimeError):
    """The evaluation gate blocked publication; metrics.json says why."""


def _lists(df: pd.DataFrame, rank_col: str) -> dict[str, list[str]]:
    """user -> item ids in rank_col order (ties in row order), users sorted. One stable
    sort on integer codes and list slices: a pandas group per user was 6% of the stage."""
    if df.empty:
        return {}
    u_code, users = pd.factorize(df["user_id"], sort=True)
    order = np.lexsort((df[rank_col].to_numpy(), u_code))
    items = df["item_id"].to_numpy()[order].tolist()
    u_sorted = u_code[order]
    bounds = [*np.flatnonzero(np.r_[True, u_sorted[1:] != u_sorted[:-1]]).tolist(), len(items)]
    return {users[u_sorted[a]]: items[a:b] for a, b in itertools.pairwise(bounds)}


def previous_metrics(cfg: Config, rd: RunDir) -> dict[str, Any] | None:
    """metrics.json of the newest earlier logical date with the same run_id."""
    from recsys import storage

    best = None
    for p in storage.pull_matching(cfg.paths.work_root, cfg.local_work_root(), f"runs/*/{rd.run_id}/metrics.json"):
        if p.parts[-3] < rd.date.isoformat():
            best = p
    if best is None:
        return None
    m = json.loads(best.read_text())
    m["_path"] = str(best)
    return m


def gate(cfg: Config, methods: dict[str, dict[str, float]], prev: dict[str, Any] | None) -> dict[str, Any]:
    """Pass/fail with reasons: vs the best in-run baseline and vs the previous run."""
    ec = cfg.evaluate
    metric, method = ec.gate_metric, ec.gate_method
    ours = methods[method][metric]
    base_name = max((b for b in BASELINES if b in methods), key=lambda b: methods[b][metric])
    base = methods[base_name][metric]
    checks = []
    need = ec.gate_min_ratio_vs_baseline * base
    checks.append({
        "check": f"{method} {metric} >= {ec.gate_min_ratio_vs_baseline} x best baseline ({base_name})",
        "value": ours, "threshold": need, "passed": bool(ours >= need),
    })  # fmt: skip
    if prev and (prev.get("methods", {}).get(method) or {}).get(metric) is not None:
        p = float(prev["methods"][method][metric])
        need_prev = (1.0 - ec.gate_max_drop_vs_previous) * p
        checks.append({
            "check": f"{method} {metric} >= (1 - {ec.gate_max_drop_vs_previous}) x previous run",
            "value": ours, "threshold": need_prev, "passed": bool(ours >= need_prev), "previous": prev.get("_path"),
        })  # fmt: skip
    if math.isnan(ours):
        checks.append({"check": "metric is defined (some users have targets)", "passed": False})
    passed = all(c["passed"] for c in checks) or not ec.gate_enabled
    return {"enabled": ec.gate_enabled, "metric": metric, "method": method, "baseline": base_name,
            "passed": passed, "checks": checks}  # fmt: skip


def candidate_users(cfg: Config, rd: RunDir) -> np.ndarray:
    """The users evaluation may need: those with held-out events, sampled to twice
    evaluate.max_eval_users (holdout_targets samples the final set from them); the
    context holds only these users, not the whole shop (11.6 GB at 100k users before)."""
    users = np.sort(pd.read_parquet(rd.require("features", "holdout"), columns=["user_id"])["user_id"].unique())
    cap = 2 * cfg.evaluate.max_eval_users
    if len(users) > cap:
        users = np.sort(np.random.default_rng(cfg.train.seed).choice(users, cap, replace=False))
    return users.astype(object)


def holdout_targets(cfg: Config, rd: RunDir, ctx: Context) -> dict[str, set[str]]:
    """user -> held-out items they may still be shown, for users with history."""
    hold = pd.read_parquet(rd.require("features", "holdout"))
    hold["row"] = ctx.catalog.index().get_indexer(hold["item_id"])
    hold = hold[(hold["row"] >= 0) & hold["user_id"].isin(ctx.user_row)]
    targets: dict[str, set[str]] = {}
    for u, g in hold.groupby("user_id"):
        blocked = ctx.blocked(str(u))
        t = {x for x, r in zip(g["item_id"], g["row"], strict=True) if r not in blocked}
        if t:
            targets[str(u)] = t
    if len(targets) > cfg.evaluate.max_eval_users:
        rng = np.random.default_rng(cfg.train.seed)
        keep = sorted(rng.choice(sorted(targets), cfg.evaluate.max_eval_users, replace=False).tolist())
        targets = {u: targets[u] for u in keep}
    return targets


def _top_k_lists(ctx: Context, users: list[str], scores: np.ndarray, rows: np.ndarray, k: int) -> dict[str, list[str]]:
    """scores [U, M] over catalog rows [M] -> top k item ids per user, skipping blocked
    (events.exclude_policy) and unservable items: the rule every method is held to."""
    out = {}
    ok = ctx.servable[rows]
    for j, u in enumerate(users):
        s = np.where(ok, scores[j], -np.inf)
        bad = np.isin(rows, np.fromiter(ctx.blocked(u), dtype=np.int64))
        s[bad] = -np.inf
        top = np.argpartition(-s, min(k, len(s) - 1))[:k]
        top = top[np.argsort(-s[top], kind="stable")]
        out[u] = [str(ctx.catalog.ids[rows[i]]) for i in top if np.isfinite(s[i])]
    return out


def last_item_cooc(ctx: Context, users: list[str], k: int) -> dict[str, list[str]]:
    """Baseline: the co-visitation neighbours of the user's last item, strongest first."""
    out: dict[str, list[str]] = {}
    for u in users:
        h = ctx.history(u)
        nb = ctx.covis.get(int(h[-1])) if len(h) else None
        if nb is None:
            out[u] = []
            continue
        bad = ctx.blocked(u)
        out[u] = [str(ctx.catalog.ids[b]) for b in nb[0] if int(b) not in bad and ctx.servable[b]][:k]
    return out


def ease(ctx: Context, users: list[str], k: int, lam: float, max_items: int,
         train: Sequences | None = None) -> dict[str, list[str]] | None:  # fmt: skip
    """Baseline: EASE (recsys/ease.py, the dense B) over the items with training events,
    X from train (every user's history; default the context's users); None when there
    are more than max_items of them."""
    from recsys import ease as E

    train = train if train is not None else ctx.seqs
    n_all = len(ctx.catalog.ids)
    fitted = E.fit(train, n_all, lam, max_items)
    if fitted is None:
        return None
    items, B = fitted
    col = np.full(n_all, -1, dtype=np.int64)
    col[items] = np.arange(len(items))
    out: dict[str, list[str]] = {}
    for i in range(0, len(users), 2048):
        batch = users[i : i + 2048]
        r = np.array([ctx.user_row[u] for u in batch])
        Xu = E.binary_matrix(ctx.seqs, col, len(items), r)
        out.update(_top_k_lists(ctx, batch, np.asarray(Xu @ B), items, k))  # [b, M] scores
    return out


def ease_train(cfg: Config, rd: RunDir, ctx: Context) -> Sequences | None:
    """Every user's training history for EASE's item-item matrix (the context holds the
    evaluated users only); None when EASE cannot run (too many items with events)."""
    n_items = int((ctx.item_stats["n_events"].to_numpy() > 0).sum())
    if n_items > cfg.evaluate.ease_max_items:
        return None
    return load_sequences(rd.require("features", "train", "sequences"), ctx.catalog.index(), cfg.type_names())


def method_lists(cfg: Config, rd: RunDir, ctx: Context, users: list[str]) -> dict[str, dict[str, list[str]]]:
    """Every method's ranked list for every user (see the module doc)."""
    ec = cfg.evaluate
    kmax = max(ec.ks)
    cands = generate_all(ctx, users, k=max(kmax, cfg.retrieve.per_source_k))
    lists: dict[str, dict[str, list[str]]] = {}
    for name in SOURCES:
        if (cands["source"] == name).any():
            lists[name] = _lists(cands[cands["source"] == name], "source_rank")
    lists["last_item_cooc"] = last_item_cooc(ctx, users, kmax)
    t = time.time()
    e = ease(ctx, users, kmax, ec.ease_lambda, ec.ease_max_items, ease_train(cfg, rd, ctx))
    if e is not None:
        lists["ease"] = e
        log.info("evaluate: EASE over %d items in %.1fs", len(np.unique(ctx.seqs.items)), time.time() - t)
    blended = blend(ranker_input(cands), cfg.retrieve.source_weights, cfg.rerank.rrf_k, cfg.retrieve.top_k)
    lists["blended"] = _lists(blended, "rank")
    ranked = rank_candidates(cfg, load_ranker(rd), ctx, cands, fallback=fallback_order(rd))
    lists["ranked"] = _lists(ranked, "rank")
    slates = build_slates(cfg, ctx, ranked, cands)
    lists["homepage"] = {u: flatten(secs) for u, secs in slates.items()}
    return lists


def long_tail_items(cfg: Config, ctx: Context) -> set[str]:
    """Items beyond the rerank.long_tail_quantile of popularity (as the Discover section)."""
    pop = ctx.item_stats["pop_score"].to_numpy(np.float64)
    rank = np.empty(len(pop), dtype=np.int64)
    rank[np.lexsort((np.arange(len(pop)), -pop))] = np.arange(len(pop))
    return {str(x) for x in ctx.catalog.ids[rank >= int(len(pop) * cfg.rerank.long_tail_quantile)]}


def beyond_accuracy(cfg: Config, ctx: Context, lists: dict[str, dict[str, list[str]]]) -> dict[str, dict[str, float]]:
    tail = long_tail_items(cfg, ctx)
    vec_of = {str(x): ctx.item_vecs[i] for i, x in enumerate(ctx.catalog.ids)} if ctx.item_vecs is not None else {}
    out = {}
    for name, lst in lists.items():
        slots = [x for v in lst.values() for x in v[:10]]
        out[name] = {
            "coverage@10": catalog_coverage(lst, len(ctx.catalog.ids), 10),
            "long_tail_share@10": sum(x in tail for x in slots) / len(slots) if slots else float("nan"),
            "ild@10": float(np.nanmean([intra_list_diversity(vec_of, v, 10) for v in lst.values()] or [np.nan])),
        }
    return out


def cold_targets(cfg: Config, ctx: Context, targets: dict[str, set[str]]) -> dict[str, set[str]]:
    """Targets the model knows by text alone: fewer than model.id_embedding_min_count
    training events (no id embedding), and the item existed at the split."""
    idx = ctx.catalog.index()
    n_events = ctx.item_stats["n_events"].to_numpy()
    cold = {}
    for u, t in targets.items():
        c = {
            x for x in t if n_events[idx.get_loc(x)] < cfg.model.id_embedding_min_count and ctx.servable[idx.get_loc(x)]
        }
        if c:
            cold[u] = c
    return cold


def run_evaluate(cfg: Config, rd: RunDir) -> dict[str, Any]:
    t0 = time.time()
    ec = cfg.evaluate
    result: dict[str, Any]
    if not ec.enabled:
        result = {
            "protocol": "none",
            "note": "holdout_days=0 with the time protocol: trained on everything before the run date; "
            "no internal evaluation and no gate ran",
            "methods": {},
            "gate": {"enabled": False, "passed": True, "skipped": "no holdout: nothing was evaluated"},
        }
        _write(rd, result)
        return {"gate_passed": True, "skipped": "no holdout", "seconds": round(time.time() - t0, 1)}
    ctx = load_context(cfg, rd, "train", users=candidate_users(cfg, rd))
    targets = holdout_targets(cfg, rd, ctx)
    users = sorted(targets)
    log.info("evaluate: %s protocol, %d users with targets", ec.protocol, len(users))
    lists = method_lists(cfg, rd, ctx, users)
    methods = {
        name: summarise(per_user_metrics(lst, targets, ec.ks), seed=cfg.train.seed) for name, lst in lists.items()
    }
    cold = cold_targets(cfg, ctx, targets)
    cold_m = {name: summarise(per_user_metrics(lst, cold, ec.ks), seed=cfg.train.seed) for name, lst in lists.items()}
    prev = previous_metrics(cfg, rd)
    g = gate(cfg, methods, prev)
    result = {
        "protocol": ec.protocol,
        "holdout_days": ec.holdout_days if ec.protocol == "time" else None,
        "leave_last_n": ec.leave_last_n if ec.protocol == "leave_last" else None,
        "split_date": ctx.cutoff.isoformat(),
        "users_evaluated": len(users),
        "cold_start_users": len(cold),
        "cold_start_targets": sum(len(t) for t in cold.values()),
        "cold_start_note": "targets with fewer than model.id_embedding_min_count training events that existed "
        "at the split; a method at 0.0 found none of them",
        "ks": ec.ks,
        "methods": methods,
        "cold_start": cold_m,
        "beyond_accuracy": beyond_accuracy(cfg, ctx, lists),
        "gate": g,
        "previous_run": prev.get("_path") if prev else None,
        "seconds": round(time.time() - t0, 1),
    }
    _write(rd, result)
    gm = ec.gate_metric
    log.info("evaluate: %s  %s", gm, "  ".join(f"{n}={m[gm]:.4f}" for n, m in methods.items()))
    if not g["passed"]:
        failed = [c["check"] for c in g["checks"] if not c["passed"]]
        raise GateFailed(f"evaluation gate failed: {failed}; see {rd.path('metrics.json')}")
    return {
        "gate_passed": g["passed"],
        "users_evaluated": len(users),
        gm: {n: round(m[gm], 4) for n, m in methods.items()},
        "seconds": result["seconds"],
    }


def _write(rd: RunDir, result: dict[str, Any]) -> None:
    # The gate result belongs to these exact slates: publish refuses any others.
    result["slates_sha256"] = rd.slates_fingerprint()
    jsonio.write(rd.path("metrics.json"), result)
    rd.path("report.html").write_text(render_report(rd, result))
