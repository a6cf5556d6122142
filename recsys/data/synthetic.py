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
    bot_users: int = 1
    bot_events_per_day: int = 2500  # on one day; above events.bot_max_events_per_day
    seed: int = 7


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
    paths, nouns, dept_of, complement = [], [], [], []
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
    n_new = int(round(spec.n_items * spec.new_items_per_day * max(spec.days - 1, 0)))
    total = spec.n_items + n_new
    cat_idx = rng.integers(0, len(paths), size=total)
    created_day = np.zeros(total, dtype=np.int64)
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


def generate(out_root: str | Path, spec: SyntheticSpec = SyntheticSpec()) -> dict[str, int]:
    """Write events/dt=*/ and catalog/dt=*/ under out_root; returns row counts."""
    t0 = time.time()
    out = Path(out_root)
    rng = np.random.default_rng(spec.seed)
    paths, _, dept_of, complement = _flat_categories()
    n_depts = int(dept_of.max()) + 1
    cat = _make_catalog(spec, rng)
    n_total = len(cat.item_id)
    # Zipf popularity: a random rank per item, weight rank^-a.
    pop = (rng.permutation(n_total) + 1.0) ** (-spec.zipf_a)
    items_by_cat = [np.flatnonzero(cat.cat_idx == c) for c in range(len(paths))]

    # Users: interests over departments (sparse Dirichlet), activity (log-normal).
    interest = rng.dirichlet(np.full(n_depts, 0.3), size=spec.n_users)  # [U, D]
    activity = np.exp(rng.normal(0.0, 0.8, size=spec.n_users))
    activity /= activity.mean()
    user_ids = np.array([f"u{u:07d}" for u in range(spec.n_users)])
    start = spec.end_date - dt.timedelta(days=spec.days - 1)
    counts = {"events": 0, "catalog_rows": 0, "bad_rows": 0}

    for day in range(spec.days):
        date = start + dt.timedelta(days=day)
        live = (cat.created_day <= day) & (cat.unavailable_from > day)
        # Catalog: a full snapshot per day of every item created so far.
        existing = np.flatnonzero(cat.created_day <= day)
        created_at = [
            dt.datetime.combine(start + dt.timedelta(days=int(cat.created_day[i])), dt.time(6))
            for i in existing
        ]
        _write(
            pa.table(
                {
                    "item_id": cat.item_id[existing],
                    "title": [cat.title[i] for i in existing],
                    "category": [cat.category[i] for i in existing],
                    "brand": [cat.brand[i] for i in existing],
                    "description": [cat.description[i] for i in existing],
                    "price": cat.price[existing],
                    "available": live[existing],
                    "created_at": pa.array(created_at, type=pa.timestamp("us", tz="UTC")),
                }
            ),
            out / "catalog" / f"dt={date.isoformat()}",
        )
        counts["catalog_rows"] += len(existing)

        rows_u, rows_i, rows_t, rows_ts, rows_s = [], [], [], [], []
        n_sess = rng.poisson(spec.sessions_per_user_day * activity)
        day_start = dt.datetime.combine(date, dt.time(0), tzinfo=dt.UTC).timestamp()
        sess_counter = 0
        for u in np.flatnonzero(n_sess):
            for _ in range(int(n_sess[u])):
                sess_counter += 1
                sid = f"s{day:03d}-{sess_counter:08d}"
                dept = int(rng.choice(n_depts, p=interest[u]))
                cats_in_dept = np.flatnonzero(dept_of == dept)
                c = int(rng.choice(cats_in_dept))
                t = day_start + rng.uniform(0, 86_000)
                length = 1 + rng.poisson(spec.session_length - 1)
                for _step in range(length):
                    if rng.random() < spec.complement_prob:
                        c = int(complement[c])
                    pool = items_by_cat[c]
                    pool = pool[live[pool]]
                    if len(pool) == 0:
                        continue
                    w = pop[pool]
                    # New items get a boost for a few days so they collect some events.
                    age = day - cat.created_day[pool]
                    w = w * np.where((cat.created_day[pool] > 0) & (age < 5), 20.0, 1.0)
                    item = int(pool[rng.choice(len(pool), p=w / w.sum())])
                    t += rng.exponential(40.0)
                    funnel = ["view"]
                    if rng.random() < 0.35:
                        funnel.append("click")
                        if rng.random() < 0.3:
                            funnel.append("add_to_cart")
                            if rng.random() < 0.5:
                                funnel.append("purchase")
                    for ev in funnel:
                        t += rng.exponential(15.0)
                        rows_u.append(user_ids[u])
                        rows_i.append(cat.item_id[item])
                        rows_t.append(ev)
                        rows_ts.append(min(t, day_start + 86_399))
                        rows_s.append(sid)
        ts = [dt.datetime.fromtimestamp(x, dt.UTC) for x in rows_ts]
        n_good = len(rows_u)
        n_bad = int(math.ceil(n_good * spec.corrupt_rate)) if spec.corrupt_rate > 0 else 0
        for b in range(n_bad):
            kind = b % 4
            j = int(rng.integers(n_good)) if n_good else 0
            if kind == 0:  # unknown item
                rows_u.append(rows_u[j]), rows_i.append("i-unknown-%d" % b)
                rows_t.append("view"), ts.append(ts[j]), rows_s.append(rows_s[j])
            elif kind == 1:  # missing user id
                rows_u.append(None), rows_i.append(rows_i[j])
                rows_t.append("click"), ts.append(ts[j]), rows_s.append(rows_s[j])
            elif kind == 2:  # timestamp in the future
                rows_u.append(rows_u[j]), rows_i.append(rows_i[j])
                rows_t.append("view"), rows_s.append(rows_s[j])
                ts.append(dt.datetime.combine(spec.end_date + dt.timedelta(days=400), dt.time(1), dt.UTC))
            else:  # exact duplicate
                rows_u.append(rows_u[j]), rows_i.append(rows_i[j])
                rows_t.append(rows_t[j]), ts.append(ts[j]), rows_s.append(rows_s[j])
        if spec.bot_users and n_good and day == max(spec.days - 3, 0):
            # A crawler: thousands of views in one day from one account.
            live_ids = cat.item_id[live]
            for k in range(spec.bot_events_per_day * spec.bot_users):
                rows_u.append(f"bot{k % spec.bot_users:03d}")
                rows_i.append(live_ids[k % len(live_ids)])
                rows_t.append("view")
                ts.append(dt.datetime.fromtimestamp(day_start + k * 30 % 86_000, dt.UTC))
                rows_s.append(f"bot-{day}")
            n_bad += spec.bot_events_per_day * spec.bot_users
        _write(
            pa.table(
                {
                    "user_id": pa.array(rows_u, type=pa.string()),
                    "item_id": pa.array(rows_i, type=pa.string()),
                    "event_type": pa.array(rows_t, type=pa.string()),
                    "ts": pa.array(ts, type=pa.timestamp("us", tz="UTC")),
                    "session_id": pa.array(rows_s, type=pa.string()),
                }
            ),
            out / "events" / f"dt={date.isoformat()}",
        )
        counts["events"] += n_good
        counts["bad_rows"] += n_bad
        if day % 7 == 6 or day == spec.days - 1:
            rate = counts["events"] / max(time.time() - t0, 1e-9)
            log.info(
                "synthetic: day %d/%d (%s) events=%d bad=%d (%.0f events/s)",
                day + 1, spec.days, date, counts["events"], counts["bad_rows"], rate,
            )  # fmt: skip
    counts["items"] = n_total
    counts["users"] = spec.n_users
    return counts
