"""How good can any ranking be on the synthetic shop? Scores rankings that know the
generator's hidden state, on the same users, targets and exclusions as bench/quality.py.

    python bench/quality.py synthetic --work /tmp/q        # the run to compare with
    python bench/synthetic_ceiling.py --work /tmp/q        # same --work

The generator draws each session's department from the user's interest mix, a category
uniformly inside it, and an item by popularity within the category (new items boosted
for 5 days). So a user's chance of meeting an item in the holdout is, up to a per-user
constant, interest[u, dept(i)] x the item's share of its category over the holdout days
(recsys.data.synthetic.expected_views), and ranking by it maximises expected NDCG with
binary targets. Three rankings, each held to evaluation's exclusion rule:

    oracle          the true interests and the true item shares of the holdout days:
                    the ceiling no method can pass in expectation
    bayes_interest  interests estimated from the training sessions (Dirichlet(0.3)
                    posterior mean, the generator's prior) x the true item shares: what
                    the best possible learner of users could reach
    plug_in         those estimated interests x each item's share of its category's
                    events over the last 7 training days: a two-line model using
                    nothing from the future
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from quality import setup, synthetic_spec  # noqa: E402

from recsys.data.synthetic import World, expected_views, world  # noqa: E402
from recsys.evaluation.evaluate import BASELINES, _top_k_lists, candidate_users, holdout_targets  # noqa: E402
from recsys.evaluation.metrics import per_user_metrics, summarise  # noqa: E402
from recsys.retrieve import load_context  # noqa: E402
from recsys.rundir import RunDir  # noqa: E402

PRIOR = 0.3  # the generator's Dirichlet concentration per department


def train_sessions(rd: RunDir, users: list[str], cutoff) -> ds.Dataset:  # type: ignore[no-untyped-def]
    """(user_id, item_id, session_id) of the validated events before cutoff, for users."""
    import datetime as dt

    d = ds.dataset(rd.path("validated", "events"), partitioning="hive")
    ts = dt.datetime.combine(cutoff, dt.time(0), tzinfo=dt.UTC)
    flt = (pc.field("ts") < ts) & pc.field("user_id").isin(users)
    return d.to_table(columns=["user_id", "item_id", "session_id", "ts"], filter=flt)


def estimated_interest(w: World, ev, users: list[str]) -> np.ndarray:  # type: ignore[no-untyped-def]
    """[U, D] posterior mean interest from each user's sessions (a session is one draw of
    its department; its steps are not independent draws)."""
    df = ev.to_pandas()
    df["dept"] = w.dept_of[w.cat.cat_idx[df["item_id"].str[1:].astype(int).to_numpy()]]
    sess = df.drop_duplicates(["user_id", "session_id"])[["user_id", "dept"]]
    row = {u: j for j, u in enumerate(users)}
    counts = np.zeros((len(users), w.interest.shape[1]))
    np.add.at(counts, (sess["user_id"].map(row).to_numpy(), sess["dept"].to_numpy()), 1.0)
    return (counts + PRIOR) / (counts.sum(1, keepdims=True) + PRIOR * counts.shape[1])


def recent_shares(w: World, rd: RunDir, cutoff, days: int = 7) -> np.ndarray:  # type: ignore[no-untyped-def]
    """[I] each item's share of its category's events in the last days before cutoff."""
    import datetime as dt

    d = ds.dataset(rd.path("validated", "events"), partitioning="hive")
    lo = dt.datetime.combine(cutoff - dt.timedelta(days=days), dt.time(0), tzinfo=dt.UTC)
    hi = dt.datetime.combine(cutoff, dt.time(0), tzinfo=dt.UTC)
    t = d.to_table(columns=["item_id"], filter=(pc.field("ts") >= lo) & (pc.field("ts") < hi)).to_pandas()
    t = t[t["item_id"].str.fullmatch(r"i\d{7}")]
    n = np.bincount(t["item_id"].str[1:].astype(int).to_numpy(), minlength=len(w.cat.item_id)).astype(float)
    tot = np.bincount(w.cat.cat_idx, weights=n, minlength=len(w.dept_of))
    return np.divide(n, tot[w.cat.cat_idx], out=np.zeros_like(n), where=tot[w.cat.cat_idx] > 0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--work", default=str(ROOT / "work" / "bench"))
    p.add_argument("--set", action="append", default=[], help="config override KEY=VALUE (as the run had)")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg, date = setup("synthetic", a.work, a.set)
    spec, rd = synthetic_spec(), RunDir(cfg, date)
    run = json.loads(rd.path("metrics.json").read_text())
    ctx = load_context(cfg, rd, "train", with_vectors=False, users=candidate_users(cfg, rd))
    targets = holdout_targets(cfg, rd, ctx)
    users = sorted(targets)
    w = world(spec)
    ids = ctx.catalog.ids.astype(str)
    rows = np.flatnonzero(np.char.startswith(ids, "i"))  # the generator's items (all of them)
    items = np.array([int(x[1:]) for x in ids[rows]])
    holdout = range(spec.day_index(ctx.cutoff), spec.day_index(date))
    u_idx = np.array([int(u[1:]) for u in users])
    est = estimated_interest(w, train_sessions(rd, users, ctx.cutoff), users)  # [U, D]
    dept = w.dept_of[w.cat.cat_idx]  # [I] every generator item
    plug = est[:, dept] / np.bincount(w.dept_of)[dept] * recent_shares(w, rd, ctx.cutoff)  # [U, I]
    rankings = {  # [U, M] over the catalog rows
        "oracle": expected_views(w, holdout)[u_idx][:, items],
        "bayes_interest": expected_views(w, holdout, interest=est)[:, items],
        "plug_in": plug[:, items],
    }
    k = max(cfg.evaluate.ks)
    methods = dict(run["methods"])
    for name, scores in rankings.items():
        lists = _top_k_lists(ctx, users, scores, rows, k)
        methods[name] = summarise(per_user_metrics(lists, targets, cfg.evaluate.ks), seed=cfg.train.seed)
    best = max((b for b in BASELINES if b in run["methods"]), key=lambda b: run["methods"][b]["ndcg@10"])
    ref = run["methods"][best]["ndcg@10"]
    print(f"\nsynthetic: {len(users)} users, holdout days {holdout.start}-{holdout.stop - 1}, best baseline {best}\n")
    print("| method | NDCG@10 [95% CI] | Recall@10 | Recall@50 | NDCG@10 / best baseline |")
    print("|---|---|---|---|---|")
    for name, r in sorted(methods.items(), key=lambda kv: -kv[1]["ndcg@10"]):
        print(f"| {name} | {r['ndcg@10']:.4f} [{r['ndcg@10_lo']:.3f}, {r['ndcg@10_hi']:.3f}] | {r['recall@10']:.4f} "
              f"| {r['recall@50']:.4f} | {r['ndcg@10'] / ref:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
