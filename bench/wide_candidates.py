"""wide_candidates at 20k users x 250 candidates (6M rows): time, and equality with the
pandas pivot + per-group join it replaced (kept here as the reference).

    python bench/wide_candidates.py
"""

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from recsys.rank import wide_candidates
from recsys.retrieve import SOURCES


def reference(cands: pd.DataFrame) -> pd.DataFrame:
    """The first implementation: pandas pivot_table and a Python join per pair."""
    c = cands.sort_values(["user_id", "item_id", "source_rank", "source"], kind="stable")
    wide = c.pivot_table(index=["user_id", "item_id"], columns="source", values=["score", "source_rank"],
                         aggfunc="first", observed=True)  # fmt: skip
    out = pd.DataFrame(index=wide.index)
    for s in SOURCES:
        out[f"{s}_score"] = wide["score"][s] if ("score", s) in wide.columns else np.nan
        out[f"{s}_rank"] = wide["source_rank"][s] if ("source_rank", s) in wide.columns else np.nan
    g = c.groupby(["user_id", "item_id"], sort=True)
    out["n_sources"] = g.size()
    first = g.first()
    out["source"] = first["source"]
    out["sources"] = g["source"].agg(lambda s: ",".join(sorted(s)))
    out["anchor"] = first["anchor"].fillna("")
    return out.reset_index()


def main(users: int = 20_000) -> None:
    rng = np.random.default_rng(0)
    parts = []
    for s, k in zip(SOURCES, [100, 50, 50, 50, 50], strict=True):
        u = np.repeat(np.arange(users), k)
        it = rng.integers(0, 5000, size=users * k)
        parts.append(pd.DataFrame({
            "user_id": np.char.add("u", u.astype(str)).astype(object),
            "item_id": np.char.add("i", it.astype(str)).astype(object),
            "score": rng.random(users * k), "source": s, "source_rank": np.tile(np.arange(1, k + 1), users),
            "anchor": "",
        }))  # fmt: skip
    c = pd.concat(parts, ignore_index=True).drop_duplicates(["user_id", "item_id", "source"])
    t = time.time()
    new = wide_candidates(c)
    t_new = time.time() - t
    t = time.time()
    ref = reference(c)
    t_ref = time.time() - t
    pd.testing.assert_frame_equal(new.reset_index(drop=True), ref.reset_index(drop=True), check_dtype=False)
    print(f"{len(c):,} candidate rows -> {len(new):,} pairs: wide_candidates {t_new:.1f}s, reference {t_ref:.1f}s "
          f"({t_ref / t_new:.1f}x), identical output")  # fmt: skip


if __name__ == "__main__":
    main()
