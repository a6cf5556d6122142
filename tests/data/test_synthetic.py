import datetime as dt

import numpy as np
import pyarrow.parquet as pq

from recsys.contract import CATALOG_COLUMNS
from recsys.data.synthetic import SyntheticSpec, generate

SPEC = SyntheticSpec(n_users=60, n_items=50, days=6, end_date=dt.date(2026, 11, 21), seed=1,
                     corrupt_rate=0.02, bot_users=1, bot_events_per_day=30)  # fmt: skip


def read(root, kind, day):
    return pq.read_table(root / kind / f"dt={day}").to_pandas()


def test_contract_layout_and_determinism(tmp_path):
    a = generate(tmp_path / "a", SPEC)
    b = generate(tmp_path / "b", SPEC)
    assert a == b
    days = sorted(p.name for p in (tmp_path / "a" / "events").iterdir())
    assert days[0] == "dt=2026-11-16" and days[-1] == "dt=2026-11-21" and len(days) == 6
    ea, eb = read(tmp_path / "a", "events", "2026-11-18"), read(tmp_path / "b", "events", "2026-11-18")
    assert ea.equals(eb)
    assert list(ea.columns) == ["user_id", "item_id", "event_type", "ts", "session_id"]
    cat = read(tmp_path / "a", "catalog", "2026-11-21")
    assert list(cat.columns) == CATALOG_COLUMNS
    assert cat["title"].str.len().min() > 5 and cat["category"].str.contains(">").all()


def test_cold_start_items_and_funnel(tmp_path):
    generate(tmp_path, SPEC)
    first = set(read(tmp_path, "catalog", "2026-11-16")["item_id"])
    last = read(tmp_path, "catalog", "2026-11-21")
    assert len(last) > len(first)  # new items appear on later days
    new = last[~last["item_id"].isin(first)]
    assert (new["created_at"].dt.date > dt.date(2026, 11, 16)).all()
    # the starting catalog existed before the window: "new arrivals" are only the new ones
    old = last[last["item_id"].isin(first)]
    assert (old["created_at"].dt.date < dt.date(2026, 11, 16) - dt.timedelta(days=29)).all()
    ev = read(tmp_path, "events", "2026-11-20")
    counts = ev["event_type"].value_counts()
    assert counts["view"] > counts.get("click", 0) > counts.get("add_to_cart", 0) >= counts.get("purchase", 0)
    # the injected bad rows are there for validation to find
    assert ev["user_id"].isna().any() or read(tmp_path, "events", "2026-11-19")["user_id"].isna().any()


def test_injected_faults_scale_with_the_data(tmp_path):
    """Issue 9: `generate --users 400` injected a 2,500-event bot (28% of its events),
    so its own night stopped at the reject-rate guard. Bots now come one per 3,000 users."""
    for users, bots in ((400, 0), (3000, 1), (6500, 2)):
        spec = SyntheticSpec(n_users=users, n_items=300, days=14, end_date=dt.date(2026, 11, 21), seed=2)
        assert spec.n_bots() == bots
        counts = generate(tmp_path / str(users), spec)
        bad_share = counts["bad_rows"] / (counts["events"] + counts["bad_rows"])
        assert bad_share < 0.05, (users, counts)  # under production's max_reject_rate (config/example.yaml)


def test_expected_views_match_what_the_generator_draws(tmp_path):
    """bench/synthetic_ceiling.py ranks by expected_views: each department's share of a
    user's steps is their interest, spread evenly over its categories, and an item's
    share of its category follows popularity, the new-item boost and availability. The
    drawn views per item must match it (total variation 0.015 here), and the model
    without the department spread (0.073) or plain popularity (0.50) must not."""
    from recsys.data.synthetic import category_shares, expected_views, world

    spec = SyntheticSpec(n_users=20_000, n_items=100, days=4, corrupt_rate=0.0, bot_users=0, seed=3,
                         new_items_per_day=0.05)  # fmt: skip
    generate(tmp_path, spec)
    w = world(spec)
    views = pq.read_table(tmp_path / "events", filters=[("event_type", "=", "view")]).to_pandas()
    drawn = np.bincount(views["item_id"].str[1:].astype(int), minlength=len(w.cat.item_id))
    ev = expected_views(w, range(spec.days))  # [U, I]
    assert np.allclose(ev.sum(1), spec.days)  # one step's worth per day, over every item

    def tv(expected):  # total variation distance between the two item distributions
        return 0.5 * np.abs(drawn / drawn.sum() - expected / expected.sum()).sum()

    dept = w.dept_of[w.cat.cat_idx]
    no_spread = (w.activity[:, None] * w.interest[:, dept]).sum(0) * category_shares(w, range(spec.days))
    plain_pop = w.pop * (w.cat.created_day <= 0)
    assert tv((w.activity[:, None] * ev).sum(0)) < 0.03
    assert tv(no_spread) > 0.05 and tv(plain_pop) > 0.05
