"""Offline evaluation on the time holdout, baselines in the same run, and the publish gate.

Protocol: the model was trained on events before the split (run date - holdout_days).
For every user with history before the split and at least one positive event in
[split, run date) on an item they may still be shown (not excluded by the policy), each
method ranks items using only pre-split data, and its top K is scored against those
holdout items. Methods, all computed here on the same users:
- popularity    global popularity before the split (baseline)
- covisitation  "what followed the user's recent items" (baseline; strong on order)
- two_tower     the model's retrieval alone
- blended       all candidate sources fused (what the re-ranker reads)
- homepage      the re-ranked page, flattened in reading order (what is published)
Also cold-start recall (targets restricted to items with no training events) and
catalog coverage / intra-list diversity of the homepage.
"""

from __future__ import annotations

import html
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys import jsonio
from recsys.config import Config
from recsys.evaluation.metrics import catalog_coverage, intra_list_diversity, mean_metrics
from recsys.rerank import build_slates, flatten
from recsys.retrieve import SOURCES, blend, generate_all, load_context
from recsys.rundir import RunDir

log = logging.getLogger(__name__)


class GateFailed(RuntimeError):
    """The evaluation gate blocked publication; metrics.json says why."""


def _lists(df: pd.DataFrame, rank_col: str) -> dict[str, list[str]]:
    df = df.sort_values(["user_id", rank_col])
    return {u: g["item_id"].tolist() for u, g in df.groupby("user_id", sort=False)}


def previous_metrics(cfg: Config, rd: RunDir) -> dict[str, Any] | None:
    """metrics.json of the newest earlier logical date with the same run_id."""
    runs = Path(cfg.paths.work_root) / "runs"
    best = None
    for p in sorted(runs.glob(f"*/{rd.run_id}/metrics.json")):
        if p.parts[-3] < rd.date.isoformat():
            best = p
    if best is None:
        return None
    m = json.loads(best.read_text())
    m["_path"] = str(best)
    return m


def gate(cfg: Config, methods: dict[str, dict[str, float]], prev: dict[str, Any] | None) -> dict[str, Any]:
    """Pass/fail with reasons: vs the popularity baseline and vs the previous run."""
    ec = cfg.evaluate
    metric, method = ec.gate_metric, ec.gate_method
    ours = methods[method][metric]
    base = methods["popularity"][metric]
    checks = []
    need = ec.gate_min_ratio_vs_popularity * base
    checks.append({
        "check": f"{method} {metric} >= {ec.gate_min_ratio_vs_popularity} x popularity",
        "value": ours, "threshold": need, "passed": bool(ours >= need),
    })  # fmt: skip
    if prev and prev.get("methods", {}).get(method, {}).get(metric) is not None:
        p = float(prev["methods"][method][metric])
        need_prev = (1.0 - ec.gate_max_drop_vs_previous) * p
        checks.append({
            "check": f"{method} {metric} >= (1 - {ec.gate_max_drop_vs_previous}) x previous run",
            "value": ours, "threshold": need_prev, "passed": bool(ours >= need_prev), "previous": prev.get("_path"),
        })  # fmt: skip
    if math.isnan(ours):
        checks.append({"check": "metric is defined (some users have targets)", "passed": False})
    passed = all(c["passed"] for c in checks) or not ec.gate_enabled
    return {"enabled": ec.gate_enabled, "metric": metric, "method": method, "passed": passed, "checks": checks}


def run_evaluate(cfg: Config, rd: RunDir) -> dict[str, Any]:
    t0 = time.time()
    ec = cfg.evaluate
    if ec.holdout_days == 0:
        result = {
            "holdout_days": 0,
            "note": "holdout_days=0: trained on everything before the run date; no internal evaluation",
            "methods": {},
            "gate": {"enabled": ec.gate_enabled, "passed": True, "skipped": "no holdout"},
        }
        _write(rd, result)
        return {"gate_passed": True, "skipped": "no holdout", "seconds": round(time.time() - t0, 1)}
    ctx = load_context(cfg, rd, "train")
    hold = pd.read_parquet(rd.require("features", "holdout"))
    idx = ctx.catalog.index()
    hold["row"] = idx.get_indexer(hold["item_id"])
    targets: dict[str, set[str]] = {}
    for u, g in hold.groupby("user_id"):
        if u not in ctx.user_row:
            continue  # no history before the split: served by the fallback, not scored here
        blocked = ctx.blocked(u)
        t = {x for x, r in zip(g["item_id"], g["row"], strict=True) if r >= 0 and r not in blocked}
        if t:
            targets[str(u)] = t
    users = sorted(targets)
    rng = np.random.default_rng(cfg.train.seed)
    if len(users) > ec.max_eval_users:
        users = sorted(rng.choice(users, ec.max_eval_users, replace=False).tolist())
        targets = {u: targets[u] for u in users}
    kmax = max(ec.ks)
    log.info("evaluate: %d users with holdout targets (%d holdout pairs)", len(users), len(hold))

    cands = generate_all(ctx, users, k=max(kmax, cfg.retrieve.per_source_k))
    lists: dict[str, dict[str, list[str]]] = {}
    for name in SOURCES:
        if name in ("popularity", "covisitation", "two_tower"):
            lists[name] = _lists(cands[cands["source"] == name], "source_rank")
    ranked = blend(cands, cfg.retrieve.source_weights, cfg.rerank.rrf_k, cfg.retrieve.top_k)
    lists["blended"] = _lists(ranked, "rank")
    by_source = cands.copy()
    slates = build_slates(cfg, ctx, ranked, by_source)
    lists["homepage"] = {u: flatten(secs) for u, secs in slates.items()}

    methods = {name: mean_metrics(lst, targets, ec.ks) for name, lst in lists.items()}
    # Cold start: targets that existed at the split but had no training events (new or
    # never-seen items): only their text can place them. Items created after the split
    # could not have been recommended by anyone and are left out of this slice.
    n_events = ctx.item_stats["n_events"].to_numpy()
    servable = ctx.servable
    cold_targets = {
        u: {x for x in t if n_events[idx.get_loc(x)] == 0 and servable[idx.get_loc(x)]} for u, t in targets.items()
    }
    cold_targets = {u: t for u, t in cold_targets.items() if t}
    cold = {name: mean_metrics(lst, cold_targets, ec.ks) for name, lst in lists.items()}
    vec_of = {str(x): ctx.item_vecs[i] for i, x in enumerate(ctx.catalog.ids)} if ctx.item_vecs is not None else {}
    beyond = {
        name: {
            f"coverage@{kmax}": catalog_coverage(lst, len(ctx.catalog.ids), kmax),
            "ild@10": float(np.nanmean([intra_list_diversity(vec_of, v, 10) for v in lst.values()] or [float("nan")])),
        }
        for name, lst in lists.items()
    }
    prev = previous_metrics(cfg, rd)
    g = gate(cfg, methods, prev)
    result = {
        "holdout_days": ec.holdout_days,
        "split_date": ctx.cutoff.isoformat(),
        "users_evaluated": len(users),
        "cold_start_users": len(cold_targets),
        "ks": ec.ks,
        "methods": methods,
        "cold_start": cold,
        "beyond_accuracy": beyond,
        "gate": g,
        "previous_run": prev.get("_path") if prev else None,
        "seconds": round(time.time() - t0, 1),
    }
    _write(rd, result)
    gm = ec.gate_metric
    log.info(
        "evaluate: %s  %s",
        gm, "  ".join(f"{n}={m[gm]:.4f}" for n, m in methods.items()),
    )  # fmt: skip
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
    jsonio.write(rd.path("metrics.json"), result)
    rd.path("report.html").write_text(render_report(rd, result))


def _fmt(x: Any) -> str:
    return f"{x:.4f}" if isinstance(x, float) and not math.isnan(x) else html.escape(str(x))


def render_report(rd: RunDir, result: dict[str, Any]) -> str:
    """A self-contained HTML page: metrics per method, cold start, gate, stage timings."""
    parts = [
        "<!doctype html><meta charset='utf-8'><title>homepage run report</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}"
        ".pass{color:#080}.fail{color:#b00}</style>",
        f"<h1>Homepage run {html.escape(rd.date.isoformat())} / {html.escape(rd.run_id)}</h1>",
    ]
    g = result.get("gate", {})
    cls = "pass" if g.get("passed") else "fail"
    parts.append(f"<h2>Gate: <span class='{cls}'>{'PASSED' if g.get('passed') else 'FAILED'}</span></h2>")
    if g.get("skipped"):
        parts.append(f"<p>{html.escape(str(g['skipped']))}</p>")
    for c in g.get("checks", []):
        parts.append(
            f"<p class='{'pass' if c['passed'] else 'fail'}'>{html.escape(c['check'])}: "
            f"{_fmt(c.get('value'))} (threshold {_fmt(c.get('threshold'))})</p>"
        )
    for title, key in (("Holdout metrics", "methods"), ("Cold-start items only", "cold_start"),
                       ("Beyond accuracy", "beyond_accuracy")):  # fmt: skip
        table = result.get(key) or {}
        if not table:
            continue
        cols = list(next(iter(table.values())).keys())
        parts.append(f"<h2>{title}</h2><table><tr><th>method</th>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>")
        for name, row in table.items():
            parts.append(f"<tr><th>{name}</th>" + "".join(f"<td>{_fmt(row.get(c))}</td>" for c in cols) + "</tr>")
        parts.append("</table>")
    stages = rd.read_manifest().get("stages", {})
    if stages:
        parts.append("<h2>Stages</h2><table><tr><th>stage</th><th>seconds</th><th>status</th></tr>")
        for s, info in stages.items():
            parts.append(
                f"<tr><th>{s}</th><td>{_fmt(info.get('seconds'))}</td><td>{_fmt(info.get('status'))}</td></tr>"
            )
        parts.append("</table>")
    return "\n".join(parts)
