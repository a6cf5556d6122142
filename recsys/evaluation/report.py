"""report.html: one self-contained page per run (plots inlined as SVG by matplotlib, no
network needed to view it). It says plainly when there was no holdout or no gate and
what a zero slice means; it shows every method beside the baselines with intervals,
coverage and long-tail share, how concentrated the pages are on popular items, section
fill rates, stage durations, quarantine counts and the last runs' key metrics."""

from __future__ import annotations

import html
import io
import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from recsys.rundir import RunDir

BASELINES = ("popularity", "last_item_cooc", "ease")
HISTORY_RUNS = 14


# ---- numbers (pure, tested) -------------------------------------------------------------
def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts [N] (0 = every item shown equally often,
    -> 1 = all slots on one item); items never shown count as zeros."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return 0.0
    return float((2 * np.arange(1, n + 1) - n - 1).dot(x) / (n * total))


def decile_shares(slot_items: np.ndarray, popularity: pd.Series) -> np.ndarray:
    """[10] share of page slots whose item is in each popularity decile of the catalog
    (decile 10 = the 10% most popular items). popularity: item_id -> score."""
    ranks = popularity.rank(method="first", ascending=True).to_numpy()
    decile = pd.Series(np.minimum((ranks - 1) * 10 // len(ranks), 9).astype(int) + 1, index=popularity.index)
    d = decile.reindex(slot_items).dropna().astype(int).to_numpy()
    if len(d) == 0:
        return np.zeros(10)
    return np.bincount(d, minlength=11)[1:] / len(d)


def section_fill(slots: pd.DataFrame, pages: int, sizes: dict[str, int]) -> dict[str, dict[str, float]]:
    """Per configured section: share of pages that show it, and slots filled / slots
    configured over all pages. slots: one row per page slot (user_id, section)."""
    n_slots = slots["section"].value_counts()
    n_pages = slots.groupby("section")["user_id"].nunique()
    return {
        key: {
            "pages_with_section": float(n_pages.get(key, 0)) / pages if pages else 0.0,
            "slots_filled": float(n_slots.get(key, 0)) / (pages * size) if pages else 0.0,
        }
        for key, size in sizes.items()
    }


# ---- plots --------------------------------------------------------------------------------
def _svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]  # drop the XML prologue: inlined in the page


def _figure(w: float = 7, h: float = 3.2) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(w, h))


def plot_methods(methods: dict[str, dict[str, float]], metric: str) -> str:
    names = sorted(methods, key=lambda m: methods[m].get(metric, 0.0))
    vals = np.array([methods[m].get(metric, np.nan) for m in names])
    lo = np.array([methods[m].get(f"{metric}_lo", np.nan) for m in names])
    hi = np.array([methods[m].get(f"{metric}_hi", np.nan) for m in names])
    err = np.nan_to_num(np.vstack([vals - lo, hi - vals]), nan=0.0).clip(min=0)
    fig, ax = _figure(7, 0.35 * len(names) + 1)
    colors = ["#9aa0a6" if m in BASELINES else "#1a73e8" for m in names]
    ax.barh(names, vals, xerr=err, color=colors, capsize=3)
    ax.set_xlabel(f"{metric} (95% bootstrap interval; grey = baselines)")
    return _svg(fig)


def plot_beyond(beyond: dict[str, dict[str, float]]) -> str:
    names = sorted(beyond)
    x = np.arange(len(names))
    fig, ax = _figure(7, 3)
    ax.bar(x - 0.2, [beyond[m].get("coverage@10", 0) for m in names], 0.4, label="catalog coverage@10")
    ax.bar(x + 0.2, [beyond[m].get("long_tail_share@10", 0) for m in names], 0.4, label="long-tail share@10")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.legend()
    return _svg(fig)


def plot_bars(labels: list[str], values: list[float], xlabel: str, color: str = "#1a73e8") -> str:
    fig, ax = _figure(7, 0.32 * max(len(labels), 2) + 1)
    ax.barh(labels, values, color=color)
    ax.set_xlabel(xlabel)
    return _svg(fig)


def plot_deciles(shares: np.ndarray) -> str:
    fig, ax = _figure(7, 2.8)
    ax.bar(np.arange(1, 11), shares * 100, color="#e37400")
    ax.axhline(10, color="#5f6368", lw=1, ls="--")
    ax.set_xticks(np.arange(1, 11))
    ax.set_xlabel("item popularity decile (10 = the most popular 10% of the catalog; dashed = uniform)")
    ax.set_ylabel("% of homepage slots")
    return _svg(fig)


def plot_history(rows: list[dict[str, Any]]) -> str:
    fig, ax = _figure(7, 2.8)
    dates = [r["date"] for r in rows]
    for key, label in (("ranked", "ranked"), ("best_baseline", "best baseline"), ("homepage", "homepage")):
        ax.plot(dates, [r.get(key, np.nan) for r in rows], marker="o", label=label)
    ax.set_ylabel("NDCG@10")
    ax.tick_params(axis="x", rotation=30)
    ax.legend()
    return _svg(fig)


# ---- inputs from the run directory ------------------------------------------------------------
def _homepage_slots(rd: RunDir) -> tuple[pd.DataFrame, int]:
    path = rd.path("slates", "slate_items.parquet")
    if not path.exists():
        return pd.DataFrame(columns=["user_id", "section", "item_id"]), 0
    slots = pq.read_table(path, columns=["user_id", "section", "item_id"]).to_pandas()
    return slots, int(slots["user_id"].nunique())


def _popularity(rd: RunDir) -> pd.Series:
    path = rd.path("features", "full", "item_stats")
    if not path.exists():
        return pd.Series(dtype=float)
    t = pq.read_table(path, columns=["item_id", "pop_score"]).to_pandas()
    return t.set_index("item_id")["pop_score"].fillna(0.0)


def run_history(rd: RunDir, n: int = HISTORY_RUNS) -> list[dict[str, Any]]:
    """Key metrics of the last n runs with this run_id, this one included, by date."""
    from recsys import storage

    cfg = rd.cfg
    rows = []
    for p in storage.pull_matching(cfg.paths.work_root, cfg.local_work_root(), f"runs/*/{rd.run_id}/metrics.json")[-n:]:
        m = json.loads(p.read_text()).get("methods") or {}
        if not m:
            continue
        base = [m[b]["ndcg@10"] for b in BASELINES if b in m]
        rows.append({
            "date": p.parts[-3], "ranked": m.get("ranked", {}).get("ndcg@10"),
            "homepage": m.get("homepage", {}).get("ndcg@10"), "best_baseline": max(base) if base else None,
        })  # fmt: skip
    return rows


# ---- the page ------------------------------------------------------------------------------------
def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return "–" if math.isnan(x) else f"{x:.4f}"
    return html.escape(str(x))


def _table(rows: dict[str, dict[str, Any]], cols: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        f"<tr><th>{html.escape(n)}</th>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in cols) + "</tr>"
        for n, r in rows.items()
    )
    return f"<table><tr><th></th>{head}</tr>{body}</table>"


def _gate_html(result: dict[str, Any]) -> str:
    g = result.get("gate", {})
    if g.get("skipped") or g.get("enabled") is False:
        return ("<h2 id='gate'>Gate: <span class='warn'>NOT RUN</span></h2><p>There was no holdout "
                f"({html.escape(str(g.get('skipped', '')))}): no metric below was measured on this run and "
                "nothing judged it before publishing.</p>")  # fmt: skip
    ok = g.get("passed")
    checks = "".join(
        f"<li class='{'pass' if c['passed'] else 'fail'}'>{html.escape(c['check'])}: {_fmt(c.get('value'))} "
        f"(threshold {_fmt(c.get('threshold'))})</li>"
        for c in g.get("checks", [])
    )
    return f"<h2 id='gate'>Gate: <span class='{'pass' if ok else 'fail'}'>{'PASSED' if ok else 'FAILED'}</span></h2><ul>{checks}</ul>"


def _cold_html(result: dict[str, Any]) -> str:
    n = result.get("cold_start_targets")
    if n is None:
        return ""
    if not n:
        return ("<h2>Cold-start items</h2><p>No cold-start target in this holdout (no held-out item had fewer "
                "than model.id_embedding_min_count training events), so there is nothing to score.</p>")  # fmt: skip
    cold = result.get("cold_start") or {}
    return (f"<h2>Cold-start items</h2><p>{n} held-out targets were items the model knew by their text alone. "
            "A method at 0.0 found none of them in its list; that is a measurement, not a missing value.</p>"
            + _table(cold, ["recall@10", "recall@50", "ndcg@10"]))  # fmt: skip


def render_report(rd: RunDir, result: dict[str, Any]) -> str:
    manifest = rd.read_manifest()
    stages = manifest.get("stages", {})
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>homepage run report</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1000px}table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}.pass{color:#137333}"
        ".fail{color:#b3261e}.warn{color:#b06000}figure{margin:.5em 0}</style></head><body>",
        f"<h1>Homepage run {html.escape(rd.date.isoformat())} / {html.escape(rd.run_id)}</h1>",
        _gate_html(result),
    ]
    methods = result.get("methods") or {}
    if methods:
        parts += [f"<h2>Quality ({html.escape(str(result.get('protocol')))} protocol, "
                  f"{result.get('users_evaluated')} users)</h2>",
                  f"<figure id='plot-ndcg'>{plot_methods(methods, 'ndcg@10')}</figure>",
                  f"<figure id='plot-recall'>{plot_methods(methods, 'recall@50')}</figure>",
                  _table(methods, ["ndcg@10", "recall@10", "mrr@10", "recall@50"])]  # fmt: skip
    if result.get("beyond_accuracy"):
        parts += [
            "<h2>Coverage and long tail</h2>",
            f"<figure id='plot-beyond'>{plot_beyond(result['beyond_accuracy'])}</figure>",
        ]
    parts.append(_cold_html(result))
    parts += _pages_html(rd)
    if stages:
        from recsys.pipeline import STAGES

        names = [s for s in STAGES if s in stages]
        parts += ["<h2>Stage durations</h2>", "<figure id='plot-stages'>" + plot_bars(
            names, [float(stages[s].get("seconds") or 0) for s in names], "seconds") + "</figure>"]  # fmt: skip
    parts += _quarantine_html(stages.get("validate", {}))
    hist = run_history(rd)
    if len(hist) >= 2:
        parts += [f"<h2>Last {len(hist)} runs</h2>", f"<figure id='plot-history'>{plot_history(hist)}</figure>"]
    else:
        parts.append("<h2>Last runs</h2><p>No earlier evaluated run of this run id yet.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _pages_html(rd: RunDir) -> list[str]:
    slots, pages = _homepage_slots(rd)
    if not pages:
        return ["<h2>Pages</h2><p>No slates in this run.</p>"]
    pop = _popularity(rd)
    counts = slots["item_id"].value_counts().reindex(pop.index, fill_value=0).to_numpy() if len(pop) else np.zeros(0)
    shares = decile_shares(slots["item_id"].to_numpy(), pop) if len(pop) else np.zeros(10)
    sizes = {s.key: s.size for s in rd.cfg.rerank.sections}
    fill = section_fill(slots, pages, sizes)
    return [
        f"<h2>Concentration on popular items</h2><p>{pages} personal pages. Gini of slots over the catalog "
        f"<b id='gini'>{gini(counts):.3f}</b> (0 = every item shown equally often); the 10% most popular items "
        f"take {shares[-1]:.0%} of the slots.</p>",
        f"<figure id='plot-deciles'>{plot_deciles(shares)}</figure>",
        "<h2>Section fill rates</h2>" + _table(fill, ["pages_with_section", "slots_filled"]),
    ]


def _quarantine_html(validate: dict[str, Any]) -> list[str]:
    reasons = {f"events: {k}": v for k, v in (validate.get("events_quarantined") or {}).items()}
    reasons |= {f"catalog: {k}": v for k, v in (validate.get("catalog_quarantined") or {}).items()}
    if not validate:
        return []
    if not reasons:
        return ["<h2>Quarantine</h2><p>No input row was quarantined.</p>"]
    total = validate.get("events_raw") or 0
    return [f"<h2>Quarantine</h2><p>{sum(reasons.values())} rows quarantined (event reject rate "
            f"{validate.get('reject_rate', 0):.2%} of {total} raw events).</p>",
            "<figure id='plot-quarantine'>" + plot_bars(list(reasons), [float(v) for v in reasons.values()],
                                                        "rows", "#b3261e") + "</figure>"]  # fmt: skip
