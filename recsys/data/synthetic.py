"""Synthetic e-commerce data in the input contract.

What it models, so that every stage has something real to find:
- a category tree (department > category) with brands and readable titles/descriptions,
  so the text tower can learn that "chef knife" and "cutting board" belong together;
- Zipf-like item popularity within each category;
- users with latent interests over departments (Dirichlet, a few per user) and a
  log-normal activity level;
- sessions that stay in a category and, with some probability, move on to its
  complementary category (knife -> cutting board): this is the order signal;
- the funnel view -> click -> add_to_cart -> purchase;
- new items appearing on later days (cold start) and a few items going unavailable;
- optional bad rows (unknown items, missing ids, future timestamps, duplicates, a bot)
  so that validation and quarantine are exercised on every run.
Deterministic for a given seed.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

# department -> [(category, nouns)]; each category's complement is the next one in its
# department (wrapping), which gives sessions a realistic "what comes next" structure.
TREE: dict[str, list[tuple[str, list[str]]]] = {
    "Kitchen": [
        ("Knives", ["Chef Knife", "Paring Knife", "Bread Knife", "Santoku Knife"]),
        ("Cutting Boards", ["Bamboo Cutting Board", "Walnut Cutting Board", "Board Set"]),
        ("Cookware", ["Frying Pan", "Saucepan", "Dutch Oven", "Wok"]),
        ("Coffee", ["Espresso Machine", "Coffee Grinder", "French Press", "Pour Over Kettle"]),
    ],
    "Electronics": [
        ("Headphones", ["Wireless Headphones", "Earbuds", "Studio Headphones"]),
        ("Phone Accessories", ["Phone Case", "Charging Cable", "Wireless Charger"]),
        ("Laptops", ["Ultrabook", "Gaming Laptop", "Chromebook"]),
        ("Laptop Accessories", ["Laptop Sleeve", "USB-C Hub", "Laptop Stand"]),
    ],
    "Sports": [
        ("Running", ["Running Shoes", "Running Shorts", "Hydration Vest"]),
        ("Fitness", ["Yoga Mat", "Dumbbell Set", "Resistance Bands", "Kettlebell"]),
        ("Cycling", ["Road Bike Helmet", "Bike Light", "Cycling Gloves"]),
        ("Camping", ["Tent", "Sleeping Bag", "Camping Stove", "Headlamp"]),
    ],
    "Home": [
        ("Bedding", ["Duvet Cover", "Pillow", "Weighted Blanket"]),
        ("Lighting", ["Desk Lamp", "Floor Lamp", "LED Strip"]),
        ("Furniture", ["Office Chair", "Standing Desk", "Bookshelf"]),
        ("Decor", ["Wall Clock", "Picture Frame", "Throw Pillow", "Vase"]),
    ],
    "Beauty": [
        ("Skincare", ["Moisturizer", "Face Serum", "Sunscreen"]),
        ("Haircare", ["Shampoo", "Conditioner", "Hair Dryer"]),
        ("Fragrance", ["Eau de Parfum", "Body Mist", "Cologne"]),
    ],
    "Toys": [
        ("Building Sets", ["Brick Set", "Marble Run", "Magnetic Tiles"]),
        ("Board Games", ["Strategy Game", "Party Game", "Puzzle 1000 Pieces"]),
        ("Outdoor Toys", ["Kite", "Water Blaster", "Scooter"]),
    ],
    "Books": [
        ("Cookbooks", ["Baking Cookbook", "Vegetarian Cookbook", "Grilling Guide"]),
        ("Fiction", ["Mystery Novel", "Science Fiction Novel", "Fantasy Saga"]),
        ("Self Help", ["Productivity Book", "Mindfulness Guide", "Habit Workbook"]),
    ],
}
BRANDS = [
    "Acme", "Northwind", "Bluepeak", "Solara", "Kestrel", "Evergreen", "Lumen", "Orbit",
    "Granite", "Willow", "Atlas", "Nimbus", "Falcon", "Harbor", "Zenith", "Cobalt",
]  # fmt: skip
ADJECTIVES = [
    "Classic", "Pro", "Compact", "Premium", "Eco", "Ultra", "Everyday", "Deluxe", "Lite",
    "Essential", "Travel", "Signature",
]  # fmt: skip
MATERIALS = ["stainless steel", "bamboo", "recycled plastic", "aluminium", "cotton", "oak",
             "silicone", "carbon fibre", "ceramic", "glass"]  # fmt: skip
FEATURES = ["lightweight", "durable", "easy to clean", "ergonomic", "water resistant",
            "gift ready", "award winning", "energy efficient", "foldable", "quiet"]  # fmt: skip


@dataclass(frozen=True)
class SyntheticSpec:
    n_users: int = 3000
    n_items: int = 2000
    days: int = 28
    end_date: dt.date = dt.date(2026, 11, 21)  # last day with events (inclusive)
    new_items_per_day: float = 0.01  # fraction of n_items added each day after day 0
    sessions_per_user_day: float = 0.25  # mean; scaled by each user's activity
    session_length: float = 4.0  # mean views per session
    complement_prob: float = 0.35  # chance a session moves on to the complement category
    zipf_a: float = 1.1
    corrupt_rate: float = 0.002  # fraction of bad rows injected (0 = clean data)
    # Crawler accounts injected on one day. None = one per 3,000 users (none below 3,000),
    # so the injected faults scale with the data: a fixed 2,500-event bot in a 400-user
    # set was 28% of its events and stopped the night at the reject-rate guard.
    bot_users: int | None = None
    bot_events_per_day: int = 2500  # on one day; above events.bot_max_events_per_day

    seed: int = 7

    def n_bots(self) -> int:
        return self.n_users // 3000 if self.bot_users is None else self.bot_users

    def day_index(self, date: dt.date) -> int:
        """The generator's day number of date (0 = the first day with events)."""
        return (date - self.end_date).days + self.days - 1


@dataclass
class _Catalog:
    item_id: np.ndarray  # [I] str
    title: list[str]
    category: list[str]
    cat_idx: np.ndarray  # [I] int, index into flat category list
    brand: list[str]
    description: list[str]
    price: np.ndarray  # [I] float
    created_day: np.ndarray  # [I] int, day index when the item appears
    unavailable_from: np.ndarray  # [I] int, day index (days = never)


def _flat_categories() -> tuple[list[str], list[list[str]], np.ndarray, np.ndarray]:
    paths: list[str] = []
    nouns: list[list[str]] = []
    dept_of: list[int] = []
    complement: list[int] = []
    for d_i, (dept, cats) in enumerate(TREE.items()):
        base = len(paths)
        for c_i, (cat, ns) in enumerate(cats):
            paths.append(f"{dept}>{cat}")
            nouns.append(ns)
            dept_of.append(d_i)
            complement.append(base + (c_i + 1) % len(cats))
    return paths, nouns, np.array(dept_of), np.array(complement)


def _make_catalog(spec: SyntheticSpec, rng: np.random.Generator) -> _Catalog:
    paths, nouns, _, _ = _flat_categories()
    n_new = round(spec.n_items * spec.new_items_per_day * max(spec.days - 1, 0))
    total = spec.n_items + n_new
    cat_idx = rng.integers(0, len(paths), size=total)
    # The starting catalog has a history: created 30 to 365 days before the window, so
    # "new arrivals" are the items added during the window, not the whole catalog. A
    # separate stream keeps every other draw (and so the events) as before.
    created_day = np.zeros(total, dtype=np.int64)
    created_day[: spec.n_items] = -np.random.default_rng(spec.seed + 1).integers(30, 366, size=spec.n_items)
    if n_new:
        created_day[spec.n_items :] = rng.integers(1, spec.days, size=n_new)
    unavailable_from = np.full(total, spec.days + 1, dtype=np.int64)
    gone = rng.random(total) < 0.02
    unavailable_from[gone] = rng.integers(1, spec.days + 1, size=int(gone.sum()))
    titles, cats, brands, descs = [], [], [], []
    price = np.round(np.exp(rng.normal(3.3, 0.9, size=total)), 2)
    for i in range(total):
        c = int(cat_idx[i])
        noun = nouns[c][int(rng.integers(len(nouns[c])))]
        brand = BRANDS[int(rng.integers(len(BRANDS)))]
        adj = ADJECTIVES[int(rng.integers(len(ADJECTIVES)))]
        mat = MATERIALS[int(rng.integers(len(MATERIALS)))]
        f1, f2 = rng.choice(len(FEATURES), size=2, replace=False)
        titles.append(f"{brand} {adj} {noun}")
        cats.append(paths[c])
        brands.append(brand)
        descs.append(
            f"A {FEATURES[f1]}, {FEATURES[f2]} {noun.lower()} made of {mat}. "
            f"Part of the {brand} {paths[c].split('>')[1].lower()} range."
        )
    return _Catalog(
        item_id=np.array([f"i{i:07d}" for i in range(total)]),
        title=titles,
        category=cats,
        cat_idx=cat_idx,
        brand=brands,
        description=descs,
        price=price,
        created_day=created_day,
        unavailable_from=unavailable_from,
    )


def _write(table: pa.Table, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path / "part-00000.parquet")


FUNNEL = np.array(["view", "click", "add_to_cart", "purchase"], dtype=object)
FUNNEL_P = (0.35, 0.3, 0.5)  # P(click | view), P(cart | click), P(purchase | cart)


def _day_events(
    spec: SyntheticSpec,
    rng: np.random.Generator,
    day: int,
    day_start: float,
    cat: _Catalog,
    pop: np.ndarray,
    live: np.ndarray,
    interest_cum: np.ndarray,
    activity: np.ndarray,
    dept_first_cat: np.ndarray,
    dept_n_cats: np.ndarray,
    comp_pow: np.ndarray,
) -> dict[str, np.ndarray]:
    """One day of sessions, vectorised over sessions, steps and funnel events.

    Returns parallel arrays over events: user [E], item [E], etype [E] (index into
    FUNNEL), ts [E] epoch seconds, session [E] (day-local session number).
    """
    n_sess = rng.poisson(spec.sessions_per_user_day * activity)  # [U]
    s_user = np.repeat(np.arange(len(activity)), n_sess)  # [S]
    S = len(s_user)
    if S == 0:
        e = np.zeros(0, dtype=np.int64)
        return {"user": e, "item": e, "etype": e, "ts": np.zeros(0), "session": e}
    dept = (interest_cum[s_user] < rng.random((S, 1))).sum(1)  # [S] inverse-CDF draw
    dept = np.minimum(dept, len(dept_first_cat) - 1)
    start_cat = dept_first_cat[dept] + (rng.random(S) * dept_n_cats[dept]).astype(np.int64)
    t_start = day_start + rng.uniform(0, 86_000, S)
    length = 1 + rng.poisson(spec.session_length - 1, S)  # [S]
    # Steps: each step moves to the complement category with complement_prob; the
    # category after k moves is complement^k(start), precomputed in comp_pow [K, C].
    st_sess = np.repeat(np.arange(S), length)  # [T]
    first = np.r_[0, np.cumsum(length)[:-1]]
    moves = (rng.random(len(st_sess)) < spec.complement_prob).astype(np.int64)
    cum = np.cumsum(moves)
    moves_so_far = cum - (cum[first] - moves[first])[st_sess]
    st_cat = comp_pow[np.minimum(moves_so_far, len(comp_pow) - 1), start_cat[st_sess]]
    # Item per step: popularity within the category among live items, new items boosted
    # for their first days so cold items collect some events.
    w_all = step_weights(cat, pop, day)
    st_item = np.full(len(st_sess), -1, dtype=np.int64)
    u = rng.random(len(st_sess))
    for c in np.unique(st_cat):
        at = np.flatnonzero(st_cat == c)
        pool = np.flatnonzero((cat.cat_idx == c) & live)
        if len(pool) == 0:
            continue
        cw = np.cumsum(w_all[pool])
        st_item[at] = pool[np.minimum(np.searchsorted(cw, u[at] * cw[-1], side="right"), len(pool) - 1)]
    keep = st_item >= 0
    st_sess, st_item = st_sess[keep], st_item[keep]
    # Funnel: view -> click -> add_to_cart -> purchase, each conditional on the last.
    r = rng.random((len(st_sess), 3))
    depth = 1 + (r[:, 0] < FUNNEL_P[0])
    depth += (depth == 2) & (r[:, 1] < FUNNEL_P[1])
    depth += (depth == 3) & (r[:, 2] < FUNNEL_P[2])
    ev_step = np.repeat(np.arange(len(st_sess)), depth)  # [E]
    step_first = np.r_[0, np.cumsum(depth)[:-1]]
    etype = np.arange(len(ev_step)) - step_first[ev_step]
    # Time: ~40 s between steps, ~15 s between funnel events, capped at the day's end.
    gap = rng.exponential(15.0, len(ev_step)) + np.where(etype == 0, rng.exponential(40.0, len(ev_step)), 0.0)
    ev_sess = st_sess[ev_step]
    cg = np.cumsum(gap)
    sess_first_ev = np.r_[0, np.flatnonzero(np.diff(ev_sess)) + 1]
    base = np.zeros(len(ev_sess))
    if len(ev_sess):
        starts = np.zeros(len(ev_sess), dtype=bool)
        starts[sess_first_ev] = True
        offset = cg[sess_first_ev] - gap[sess_first_ev]
        base = offset[np.cumsum(starts) - 1]
    ts = np.minimum(t_start[ev_sess] + cg - base, day_start + 86_399)
    return {"user": s_user[ev_sess], "item": st_item[ev_step], "etype": etype, "ts": ts, "session": ev_sess}


@dataclass
class World:
    """The generator's hidden state: what the events are drawn from (bench/synthetic_ceiling.py
    scores a ranking that knows it, the ceiling no method can pass on this data)."""

    cat: _Catalog
    pop: np.ndarray  # [I] Zipf weight of each item within its category
    interest: np.ndarray  # [U, D] each user's department mix (rows sum to 1)
    activity: np.ndarray  # [U] sessions-per-day multiplier (mean 1)
    dept_of: np.ndarray  # [C] department of each flat category
    complement: np.ndarray  # [C] the category a session moves on to
    rng: np.random.Generator  # positioned after the latent draws: the events come next


def world(spec: SyntheticSpec) -> World:
    """Catalog, popularity and users, drawn in generate's order from spec.seed."""
    rng = np.random.default_rng(spec.seed)
    _, _, dept_of, complement = _flat_categories()
    n_depts = int(dept_of.max()) + 1
    cat = _make_catalog(spec, rng)
    # Zipf popularity: a random rank per item, weight rank^-a.
    pop = (rng.permutation(len(cat.item_id)) + 1.0) ** (-spec.zipf_a)
    # Users: interests over departments (sparse Dirichlet), activity (log-normal).
    interest = rng.dirichlet(np.full(n_depts, 0.3), size=spec.n_users)  # [U, D]
    activity = np.exp(rng.normal(0.0, 0.8, size=spec.n_users))
    activity /= activity.mean()
    return World(cat, pop, interest, activity, dept_of, complement, rng)


def step_weights(cat: _Catalog, pop: np.ndarray, day: int) -> np.ndarray:
    """[I] the weight of each item when a session step picks one within its category on
    day (day index): popularity, boosted 20x for an item's first 5 days so new items
    collect events, 0 when not live."""
    live = (cat.created_day <= day) & (cat.unavailable_from > day)
    age = day - cat.created_day
    return pop * np.where((cat.created_day > 0) & (age < 5), 20.0, 1.0) * live


def category_shares(w: World, days: range) -> np.ndarray:
    """[I] each item's chance of being the pick of a step in its category, summed over
    days (day indices)."""
    n_cat = len(w.dept_of)
    out = np.zeros(len(w.cat.item_id))
    for day in days:
        sw = step_weights(w.cat, w.pop, day)
        tot = np.bincount(w.cat.cat_idx, weights=sw, minlength=n_cat)[w.cat.cat_idx]  # [I]
        out += np.divide(sw, tot, out=np.zeros_like(sw), where=tot > 0)
    return out


def expected_views(w: World, days: range, interest: np.ndarray | None = None) -> np.ndarray:
    """[U, I] each user's expected number of session steps on each item over days (day
    indices), up to the user's activity (a per-user constant that leaves the order of
    their items unchanged); interest [U, D] replaces the true one (an estimate). A
    session's department follows the interest; its start category is uniform in the
    department and complement moves stay inside it, so every step's category is uniform
    in the department; the item follows step_weights within the category."""
    dept = w.dept_of[w.cat.cat_idx]  # [I]
    mix = w.interest if interest is None else interest
    return mix[:, dept] / np.bincount(w.dept_of)[dept] * category_shares(w, days)


def generate(out_root: str | Path, spec: SyntheticSpec = SyntheticSpec()) -> dict[str, int]:
    """Write events/dt=*/ and catalog/dt=*/ under out_root; returns row counts."""
    t0 = time.time()
    out = Path(out_root)
    w = world(spec)
    rng, cat, pop, dept_of, complement = w.rng, w.cat, w.pop, w.dept_of, w.complement
    paths, _, _, _ = _flat_categories()
    n_depts = int(dept_of.max()) + 1
    dept_first_cat = np.array([int(np.flatnonzero(dept_of == d)[0]) for d in range(n_depts)])
    dept_n_cats = np.bincount(dept_of, minlength=n_depts)
    max_len = 64
    comp_pow = np.zeros((max_len, len(paths)), dtype=np.int64)  # [K, C] complement^k
    comp_pow[0] = np.arange(len(paths))
    for k in range(1, max_len):
        comp_pow[k] = complement[comp_pow[k - 1]]
    interest_cum = np.cumsum(w.interest, axis=1)
    user_ids = np.array([f"u{u:07d}" for u in range(spec.n_users)], dtype=object)
    start = spec.end_date - dt.timedelta(days=spec.days - 1)
    counts = {"events": 0, "catalog_rows": 0, "bad_rows": 0}

    for day in range(spec.days):
        date = start + dt.timedelta(days=day)
        live = (cat.created_day <= day) & (cat.unavailable_from > day)
        catalog = _catalog_snapshot(cat, day, live, np.datetime64(start, "D"))
        _write(catalog, out / "catalog" / f"dt={date.isoformat()}")
        counts["catalog_rows"] += catalog.num_rows

        day_start = dt.datetime.combine(date, dt.time(0), tzinfo=dt.UTC).timestamp()
        ev = _day_events(spec, rng, day, day_start, cat, pop, live, interest_cum, w.activity,
                         dept_first_cat, dept_n_cats, comp_pow)  # fmt: skip
        good = (user_ids[ev["user"]], cat.item_id[ev["item"]], FUNNEL[ev["etype"]], ev["ts"],
                np.array([f"s{day:03d}-{x:08d}" for x in ev["session"]], dtype=object))  # fmt: skip
        extra = _corrupt_rows(spec, rng, good)
        if spec.n_bots() and len(ev["user"]) and day == max(spec.days - 3, 0):
            extra += _bot_rows(spec, cat.item_id[live], day, day_start)
        _write(_events_table(good, extra), out / "events" / f"dt={date.isoformat()}")
        counts["events"] += len(ev["user"])
        counts["bad_rows"] += len(extra)
        if day % 7 == 6 or day == spec.days - 1:
            rate = counts["events"] / max(time.time() - t0, 1e-9)
            log.info(
                "synthetic: day %d/%d (%s) events=%d bad=%d (%.0f events/s)",
                day + 1, spec.days, date, counts["events"], counts["bad_rows"], rate,
            )  # fmt: skip
    counts["items"] = len(cat.item_id)
    counts["users"] = spec.n_users
    return counts


def _catalog_snapshot(cat: _Catalog, day: int, live: np.ndarray, start64: np.datetime64) -> pa.Table:
    """The day's full catalog snapshot: every item created so far (created 06:00 UTC of
    its day), `available` = live on that day."""
    existing = np.flatnonzero(cat.created_day <= day)
    created = (start64 + cat.created_day[existing]).astype("datetime64[us]") + np.timedelta64(6, "h")

    def col(values: list[str]) -> np.ndarray:
        return np.asarray(values, dtype=object)[existing]

    return pa.table({
        "item_id": cat.item_id[existing], "title": col(cat.title), "category": col(cat.category),
        "brand": col(cat.brand), "description": col(cat.description), "price": cat.price[existing],
        "available": live[existing],
        "created_at": pa.array(created, type=pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC")),
    })  # fmt: skip


Row = tuple[Any, Any, Any, float, Any]  # user_id, item_id, event_type, ts (epoch s), session_id


def _corrupt_rows(spec: SyntheticSpec, rng: np.random.Generator, good: tuple[np.ndarray, ...]) -> list[Row]:
    """ceil(corrupt_rate x the day's events) bad rows, each a copy of a random good row
    broken one way in turn: unknown item, missing user id, future timestamp, exact
    duplicate (validate must quarantine each with its reason)."""
    u_col, i_col, t_col, ts_col, s_col = good
    n_good = len(u_col)
    n_bad = math.ceil(n_good * spec.corrupt_rate) if spec.corrupt_rate > 0 and n_good else 0
    future = dt.datetime.combine(spec.end_date + dt.timedelta(days=400), dt.time(1), dt.UTC).timestamp()
    rows: list[Row] = []
    for b in range(n_bad):
        j = int(rng.integers(n_good))
        rows.append([
            (u_col[j], f"i-unknown-{b}", "view", ts_col[j], s_col[j]),
            (None, i_col[j], "click", ts_col[j], s_col[j]),
            (u_col[j], i_col[j], "view", future, s_col[j]),
            (u_col[j], i_col[j], t_col[j], ts_col[j], s_col[j]),
        ][b % 4])  # fmt: skip
    return rows


def _bot_rows(spec: SyntheticSpec, live_ids: np.ndarray, day: int, day_start: float) -> list[Row]:
    """Crawlers: thousands of views in one day from each of spec.n_bots() accounts."""
    n = spec.bot_events_per_day * spec.n_bots()
    return [(f"bot{k % spec.n_bots():03d}", live_ids[k % len(live_ids)], "view", day_start + k * 30 % 86_000,
             f"bot-{day}") for k in range(n)]  # fmt: skip


def _events_table(good: tuple[np.ndarray, ...], extra: list[Row]) -> pa.Table:
    """The day's event partition: the good rows, then the extra (bad and bot) rows."""
    cols = [np.concatenate([g, np.array([r[k] for r in extra], dtype=object)]) for k, g in enumerate(good)]
    ts = np.concatenate([good[3], np.array([r[3] for r in extra], dtype=np.float64)])
    return pa.table({
        "user_id": pa.array(cols[0], type=pa.string()), "item_id": pa.array(cols[1], type=pa.string()),
        "event_type": pa.array(cols[2], type=pa.string()),
        "ts": pa.array((ts * 1e6).astype(np.int64), type=pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "session_id": pa.array(cols[4], type=pa.string()),
    })  # fmt: skip
