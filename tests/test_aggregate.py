"""Spark transforms on tiny hand-made DataFrames, asserting exact output."""

import datetime as dt

import pytest

from recsys.aggregate import (
    coded_covisitation,
    covis_params,
    covisitation,
    exclusions,
    holdout,
    interactions,
    item_codes,
    item_stats,
    sequences,
    validate_catalog,
    validate_events,
)
from recsys.config import RetrieveConfig

pytestmark = pytest.mark.spark
D = dt.date(2026, 11, 22)
TYPES = ["add_to_cart", "click", "purchase", "rate", "view"]
WEIGHTS = {"view": 1.0, "click": 2.0, "add_to_cart": 4.0, "purchase": 8.0, "rate": 4.0}


def raw_events(spark, rows):
    cols = ["user_id", "item_id", "event_type", "ts", "session_id", "value", "_corrupt", "dt", "source_file"]
    return spark.createDataFrame(rows, ",".join(f"{c} string" for c in cols))


def ts(s):
    return dt.datetime.fromisoformat(s)


def test_validate_events_reasons(spark):
    cat = spark.createDataFrame([("i1",), ("i2",)], "item_id string")
    rows = [
        ("u1", "i1", "view", "2026-11-20T10:00:00Z", "s", None, None, "2026-11-20", "f1"),
        ("u1", "i1", "VIEW", "2026-11-20T10:00:00Z", "s", None, None, "2026-11-20", "f2"),  # duplicate (case-folded)
        ("u1", "i2", "click", "1763632800", "s", None, None, "2026-11-20", "f1"),  # epoch seconds
        (None, "i1", "view", "2026-11-20T10:00:00Z", "s", None, None, "2026-11-20", "f1"),
        ("u2", "i9", "view", "2026-11-20T10:00:00Z", "s", None, None, "2026-11-20", "f1"),
        ("u2", "i1", "teleport", "2026-11-20T10:00:00Z", "s", None, None, "2026-11-20", "f1"),
        ("u2", "i1", "view", "not a time", "s", None, None, "2026-11-20", "f1"),
        ("u2", "i1", "view", "2026-11-22T00:00:00Z", "s", None, None, "2026-11-21", "f1"),  # future for D
        ("u2", "i1", "rate", "2026-11-20T10:00:00Z", "s", "five", None, "2026-11-20", "f1"),
        (None, None, None, None, None, None, "{broken json", "2026-11-20", "f1"),
    ] + [("bot", "i1", "view", f"2026-11-19T10:00:{s:02d}Z", "b", None, None, "2026-11-19", "f1") for s in range(4)]
    clean, q = validate_events(raw_events(spark, rows), cat, D, TYPES, bot_max_events_per_day=3)
    got = sorted((r.user_id, r.item_id, r.event_type, r.ts) for r in clean.collect())
    assert got == [("u1", "i1", "view", ts("2026-11-20T10:00:00")), ("u1", "i2", "click", ts("2025-11-20T10:00:00"))]
    reasons = sorted(r.reason for r in q.collect())
    assert reasons == sorted(
        ["duplicate", "missing_user_id", "unknown_item", "unknown_event_type", "bad_timestamp",
         "future_timestamp", "bad_value", "unparseable_row"] + ["bot_like_user"] * 4
    )  # fmt: skip
    assert clean.count() + q.count() == len(rows)  # nothing lost


def test_bot_rule_counts_clean_events_per_day_in_one_exchange_and_sort(spark):
    cat = spark.createDataFrame([("i1",), ("i2",)], "item_id string")

    def ev(user, day, sec, item="i1"):
        return (user, item, "view", f"2026-11-{day}T10:00:{sec:02d}Z", "s", None, None, f"2026-11-{day}", "f1")

    rows = (
        # d1: 3 distinct events + one exact repeat on the 19th: 3 clean that day, not a bot
        [ev("d1", 19, s) for s in range(3)]
        + [ev("d1", 19, 0)]
        # s1: 3 a day on two days (6 in the window, at most 3 on one day): not a bot
        + [ev("s1", d, s) for d in (18, 19) for s in range(3)]
        # b1: 4 on the 20th (its one event on the 18th is quarantined with it) -> bot
        + [ev("b1", 20, s) for s in range(4)]
        + [ev("b1", 18, 0, "i2")]
        # u1: 3 clean + one unknown item on the same day: the unknown one does not count
        + [ev("u1", 19, s) for s in range(3)]
        + [ev("u1", 19, 9, "i9")]
    )
    ann = validate_events(raw_events(spark, rows), cat, D, TYPES, bot_max_events_per_day=3, annotated=True)
    # Both cross-row rules read one exchange of the events (the other one is the
    # catalog's distinct ids) and one sort: nothing is computed twice. (Read before the
    # run: the adaptive plan of a finished query prints its initial plan too.)
    plan = ann._jdf.queryExecution().executedPlan().toString()
    assert plan.count("Exchange hashpartitioning(_user") == 1 and plan.count("Sort [") == 1
    got = sorted((r._user, r.reason or "clean") for r in ann.collect())
    want = sorted(
        [("d1", "clean")] * 3 + [("d1", "duplicate")] + [("s1", "clean")] * 6 + [("b1", "bot_like_user")] * 5
        + [("u1", "clean")] * 3 + [("u1", "unknown_item")]
    )  # fmt: skip
    assert got == want


def test_validate_catalog(spark):
    cols = ["item_id", "title", "category", "brand", "description", "price", "available", "created_at",
            "_corrupt", "dt", "source_file"]  # fmt: skip
    rows = [
        ("i1", "Knife", "Kitchen>Knives", "Acme", "sharp", "9.5", "false", "2026-11-01T00:00:00Z", None, "d", "f"),
        ("i1", "Knife again", None, None, None, None, None, None, None, "d", "g"),
        ("i2", "Board", None, None, None, None, None, None, None, "d", "f"),
        ("i3", None, None, None, None, None, None, None, None, "d", "f"),
        ("i4", "Pan", None, None, None, "cheap", None, None, None, "d", "f"),
    ]
    df = spark.createDataFrame(rows, ",".join(f"{c} string" for c in cols))
    clean, q = validate_catalog(df)
    got = {r.item_id: (r.title, r.category, r.price, r.available) for r in clean.collect()}
    assert got == {"i1": ("Knife", "Kitchen>Knives", 9.5, False), "i2": ("Board", "", None, True)}
    assert sorted(r.reason for r in q.collect()) == ["bad_price", "duplicate_item_id", "missing_title"]


def clean_events(spark, rows):
    return spark.createDataFrame(
        [(u, i, t, ts(x), None, v, "d") for u, i, t, x, v in rows],
        "user_id string, item_id string, event_type string, ts timestamp, session_id string, value double, dt string",
    )


def test_sequences_collapse_repeats_and_keep_strongest(spark):
    ev = clean_events(spark, [
        ("u1", "a", "view", "2026-11-01T10:00:00", None),
        ("u1", "a", "purchase", "2026-11-01T10:01:00", None),
        ("u1", "b", "view", "2026-11-01T10:02:00", None),
        ("u1", "a", "view", "2026-11-01T10:03:00", None),
        ("u1", "c", "rate", "2026-11-01T10:04:00", 1.0),  # below min rating: not positive
        ("u1", "z", "view", "2026-11-25T10:00:00", None),  # after the cutoff
        # u2: a run of equal weights (add_to_cart 4, rate 4) takes the larger type name,
        # as max(struct(weight, event_type)) does; events out of order in the input.
        ("u2", "b", "rate", "2026-11-02T10:01:00", 5.0),
        ("u2", "b", "add_to_cart", "2026-11-02T10:00:00", None),
        ("u2", "c", "view", "2026-11-02T09:00:00", None),
        ("u3", "c", "rate", "2026-11-02T09:00:00", 2.0),  # nothing positive: no row
    ])  # fmt: skip
    inter = interactions(ev, WEIGHTS, min_rating_positive=3.0)
    rows = {r.user_id: r for r in sequences(inter, D, max_len=10).collect()}
    assert sorted(rows) == ["u1", "u2"]
    assert rows["u1"].items == ["a", "b", "a"]
    assert rows["u1"].types == ["purchase", "view", "view"]
    assert rows["u1"].ts == [ts("2026-11-01T10:00:00"), ts("2026-11-01T10:02:00"), ts("2026-11-01T10:03:00")]
    assert (rows["u2"].items, rows["u2"].types) == (["c", "b"], ["view", "rate"])
    assert rows["u2"].ts[1] == ts("2026-11-02T10:00:00")  # the run's first event
    short = {r.user_id: r for r in sequences(inter, D, max_len=2).collect()}
    assert (short["u1"].items, short["u1"].types) == (["b", "a"], ["view", "view"])
    assert short["u2"].items == ["c", "b"]


def test_splits_share_one_shuffle_of_the_events(spark):
    """run_aggregate caches the events by_user: each split's sequences then run their
    windows on it with no exchange of their own (one shuffle a night, not one per
    split), and give the same rows as on the unpartitioned events."""
    from recsys.aggregate import _cache, by_user

    ev = clean_events(spark, [(f"u{i % 7}", "abc"[i % 3], "view", f"2026-11-{1 + i % 20:02d}T10:00:00", None)
                              for i in range(60)])  # fmt: skip
    inter = interactions(ev, WEIGHTS, min_rating_positive=3.0)
    cached = _cache(by_user(inter, int(spark.conf.get("spark.sql.shuffle.partitions"))))
    cached.count()  # as run_aggregate does: an uncomputed cache reports no partitioning
    for cutoff in (D, D - dt.timedelta(days=10)):
        seqs = sequences(cached, cutoff, max_len=10)
        above_cache = seqs._jdf.queryExecution().executedPlan().toString().split("InMemoryRelation")[0]
        assert "Exchange" not in above_cache and "Sort [user_id" not in above_cache.split("Window")[-1]
        assert sorted(map(tuple, seqs.collect())) == sorted(map(tuple, sequences(inter, cutoff, 10).collect()))
    cached.unpersist()


def test_covisitation_directed_with_distance_decay(spark):
    # u3: shorter than the window (no pairs, no error); u4: an item after itself is not
    # its own neighbour (a -> a at distance 2 dropped), the others count.
    seqs = spark.createDataFrame(
        [("u1", ["a", "b", "c"]), ("u2", ["a", "b"]), ("u3", ["d"]), ("u4", ["a", "c", "a"])],
        "user_id string, items array<string>",
    )
    got = {(r.item_id, r.neighbor_id): (r.score, r["rank"]) for r in covisitation(seqs, window=2, top_n=5).collect()}
    assert got == {("a", "b"): (2.0, 1), ("a", "c"): (1.5, 2), ("b", "c"): (1.0, 1), ("c", "a"): (1.0, 1)}
    top1 = {(r.item_id, r.neighbor_id) for r in covisitation(seqs, window=2, top_n=1).collect()}
    assert top1 == {("a", "b"), ("b", "c"), ("c", "a")}
    # backward 0.5: each kept pair also scores b -> a at 0.5 x its score: b->a 0.5 x 2,
    # c->a 1 + 0.5 x 1.5, c->b 0.5 x 1, a->c 1.5 + 0.5 x 1 (c->a). Ties rank by neighbour id.
    both = {(r.item_id, r.neighbor_id): (r.score, r["rank"]) for r in covisitation(seqs, 2, 5, 0.5).collect()}
    assert both == {("a", "b"): (2.0, 1), ("a", "c"): (2.0, 2), ("b", "a"): (1.0, 1), ("b", "c"): (1.0, 2),
                    ("c", "a"): (1.75, 1), ("c", "b"): (0.5, 2)}  # fmt: skip
    # Read both ways after the cut: the forward top 1 is a->b 2, b->c 1, c->a 1 (a->c 1.5
    # cut), so c->a is 1 + nothing (not 1.75), b gets a 0.5 x 2 = 1.0 tying c (a first)
    # and a's list a->b 2 beats a->c 0.5 x 1.
    both1 = {(r.item_id, r.neighbor_id): r.score for r in covisitation(seqs, 2, 1, 0.5).collect()}
    assert both1 == {("a", "b"): 2.0, ("b", "a"): 1.0, ("c", "a"): 1.0}
    # The kept lists read both ways are exchanged once, by item, for their sum and their
    # ranking (it was twice: by pair, then by item). The plan before it runs shows the
    # first pass's two exchanges under both sides of the union (run, one is reused).
    plan = covisitation(seqs, 2, 1, 0.5)._jdf.queryExecution().executedPlan().toString()
    assert plan.count("Exchange hashpartitioning") == 5 and plan.count("REPARTITION_BY_COL") == 1
    # Every pair both ways before the cut (the small-data regime): the lists are the
    # sums over every pair, so top 5 equals `both`, and c's top 1 keeps all of c->a:
    # u4's 1 + u1's a->c read back 0.5 x 0.5 + u4's a->c read back 0.5 x 1 = 1.75.
    every = {(r.item_id, r.neighbor_id): (r.score, r["rank"]) for r in covisitation(seqs, 2, 5, 0.5, True).collect()}
    assert every == both
    every1 = {(r.item_id, r.neighbor_id): r.score for r in covisitation(seqs, 2, 1, 0.5, True).collect()}
    assert every1 == {("a", "b"): 2.0, ("b", "a"): 1.0, ("c", "a"): 1.75}
    # backward 0 reads nothing back whichever way is asked.
    assert sorted(map(tuple, covisitation(seqs, 2, 5, 0.0, True).collect())) == sorted(
        map(tuple, covisitation(seqs, 2, 5).collect()))  # fmt: skip


def test_covis_params_small_data_regime():
    rc = RetrieveConfig()
    assert covis_params(rc, rc.covis_small_events) == (rc.covis_small_window, True)
    assert covis_params(rc, rc.covis_small_events + 1) == (rc.covis_window, False)
    assert covis_params(RetrieveConfig(covis_small_events=0), 1) == (3, False)


def test_covisitation_on_item_codes_is_the_same_table(spark):
    """aggregate pairs items by item_codes (ints in id order) and decodes the table:
    the same rows as on the ids, ties by neighbour id included (b, c and d tie under a
    at top 2; the ids sort "b" < "c" < "d" but "10" < "9", so codes must follow the
    ids' string order, not a number in them)."""
    catalog = spark.createDataFrame([(i,) for i in ["d", "c", "9", "b", "a", "10", "x"]], "item_id string")
    codes = item_codes(catalog)
    assert sorted((r.item_id, r.code) for r in codes.collect()) == [
        ("10", 0), ("9", 1), ("a", 2), ("b", 3), ("c", 4), ("d", 5), ("x", 6)]  # fmt: skip
    ev = clean_events(spark, [
        (u, i, "view", f"2026-11-01T10:{m:02d}:00", None)
        for u, items in [("u1", "a d"), ("u2", "a c"), ("u3", "a b"), ("u4", "9 10 a 9"), ("u5", "10 9 10")]
        for m, i in enumerate(items.split())
    ])  # fmt: skip
    seqs = sequences(interactions(ev, WEIGHTS, 3.0), D, max_len=10, codes=codes)
    by_user = {r.user_id: (r.items, r.codes) for r in seqs.collect()}
    assert by_user["u4"] == (["9", "10", "a", "9"], [1, 0, 2, 1])
    for top_n, backward, every in [(2, 0.0, False), (2, 0.5, False), (5, 0.5, False), (2, 0.5, True)]:
        on_ids = covisitation(seqs, 2, top_n, backward, every)
        on_codes = coded_covisitation(seqs, codes, 2, top_n, backward, every)
        assert sorted(map(tuple, on_codes.collect())) == sorted(map(tuple, on_ids.collect()))
    # a's neighbours 9 (u4), b, c and d all score 1: the top 2 are the first two ids.
    assert {r.neighbor_id for r in covisitation(seqs, 2, 2).where("item_id = 'a'").collect()} == {"9", "b"}


def test_item_codes_number_ids_in_order_across_partitions(spark):
    """Each range partition is numbered from the sizes of the ones before it: with
    adaptive execution off the ids really are split into 4 ranges."""
    import random

    from pyspark.sql import functions as F

    ids = [f"id{n:04d}" for n in random.Random(0).sample(range(10_000), 200)]
    conf = {k: spark.conf.get(k) for k in ("spark.sql.adaptive.enabled", "spark.sql.shuffle.partitions")}
    spark.conf.set("spark.sql.adaptive.enabled", "false")
    spark.conf.set("spark.sql.shuffle.partitions", "4")
    try:
        cat = spark.createDataFrame([(i,) for i in ids + ids[:10]], "item_id string")  # duplicates count once
        got = sorted((r.code, r.item_id) for r in item_codes(cat).collect())
        ranges = cat.select("item_id").distinct().repartitionByRange("item_id")
        n_ranges = ranges.select(F.spark_partition_id()).distinct().count()
    finally:
        for k, v in conf.items():
            spark.conf.set(k, v)
    assert n_ranges == 4
    assert got == list(enumerate(sorted(ids)))


def test_item_stats_exclusions_holdout(spark):
    ev = clean_events(spark, [
        ("u1", "a", "view", "2026-11-10T10:00:00", None),
        ("u1", "a", "click", "2026-11-17T10:00:00", None),  # u1 again: one more event, not user
        ("u2", "a", "purchase", "2026-11-20T10:00:00", None),
        ("u1", "b", "purchase", "2026-11-21T10:00:00", None),
    ])  # fmt: skip
    inter = interactions(ev, WEIGHTS, 0.0)
    catalog = spark.createDataFrame(
        [("a", "K", None, True), ("b", "K", None, True), ("c", "K", None, False)],
        "item_id string, category string, created_at timestamp, available boolean",
    )
    split = dt.date(2026, 11, 21)
    rows = item_stats(inter, catalog, split, trending_days=5).collect()
    st = {r.item_id: (r.n_events, r.n_users, r.pop_score, r.trend_score) for r in rows}
    assert st == {"a": (3, 2, 11.0, 10.0), "b": (0, 0, 0.0, 0.0), "c": (0, 0, 0.0, 0.0)}
    assert {r.item_id: r.first_event_ts for r in rows} == {"a": ts("2026-11-10T10:00:00"), "b": None, "c": None}
    pairs = lambda df: sorted((r.user_id, r.item_id) for r in df.collect())  # noqa: E731
    assert pairs(exclusions(inter, "purchased", D)) == [("u1", "b"), ("u2", "a")]
    assert pairs(exclusions(inter, "purchased", split)) == [("u2", "a")]
    assert pairs(exclusions(inter, "interacted", D)) == [("u1", "a"), ("u1", "b"), ("u2", "a")]
    assert pairs(exclusions(inter, "none", D)) == []
    assert pairs(holdout(inter, split, D)) == [("u1", "b")]


def test_cut_last_steps_leaves_last_n_out_per_user(spark):
    from recsys.aggregate import cut_last_steps, targets

    ev = clean_events(spark, [
        ("u1", "a", "view", "2026-11-01T10:00:00", None),
        ("u1", "b", "view", "2026-11-01T10:01:00", None),
        ("u1", "c", "view", "2026-11-01T10:02:00", None),
        ("u1", "c", "purchase", "2026-11-01T10:03:00", None),  # same step as the c view
        ("u1", "d", "rate", "2026-11-01T10:04:00", 1.0),  # not positive: after the cut, dropped
        ("u2", "a", "view", "2026-11-01T10:00:00", None),  # one step only: never cut
        ("u3", "a", "view", "2026-11-01T10:00:00", None),
        ("u3", "b", "click", "2026-11-01T10:00:00", None),  # same second: item id breaks the tie
    ])  # fmt: skip
    inter = interactions(ev, WEIGHTS, min_rating_positive=3.0)
    before, after = cut_last_steps(inter, 1)
    rows = lambda df: sorted((r.user_id, r.item_id, r.event_type) for r in df.collect())  # noqa: E731
    assert rows(before) == [("u1", "a", "view"), ("u1", "b", "view"), ("u2", "a", "view"), ("u3", "a", "view")]
    assert rows(after) == [("u1", "c", "purchase"), ("u1", "c", "view"), ("u3", "b", "click")]
    got = sorted((r.user_id, r.item_id, r.grade) for r in targets(after).collect())
    assert got == [("u1", "c", 8.0), ("u3", "b", 2.0)]
    before2, after2 = cut_last_steps(inter, 2)
    assert rows(before2) == [("u1", "a", "view"), ("u2", "a", "view"), ("u3", "a", "view"), ("u3", "b", "click")]
    assert sorted({(r.user_id, r.item_id) for r in after2.collect()}) == [("u1", "b"), ("u1", "c")]


def test_rank_labels_by_days_when_users_come_back(spark):
    """auto: day labels when >= 10% of users (and min_train_users) were active in the
    last label_days, else step labels (users who do not return, as on MovieLens)."""
    from recsys.aggregate import rank_labels_by_days
    from recsys.config import load_config

    def inter(n_recent):
        rows = [(f"u{i}", "a", "view", "2026-11-10T10:00:00", None) for i in range(20)]
        rows += [(f"u{i}", "b", "view", "2026-11-21T10:00:00", None) for i in range(n_recent)]
        return interactions(clean_events(spark, rows), WEIGHTS, 0.0)

    cfg = load_config(overrides={"rank": {"min_train_users": 2, "label_days": 1}}, environ={})
    assert rank_labels_by_days(cfg, inter(3), D)  # 3 of 20 users active on Nov 21
    assert not rank_labels_by_days(cfg, inter(1), D)  # 1 < min_train_users
    assert not rank_labels_by_days(cfg, inter(3), D + dt.timedelta(days=2))  # nobody in the last day
    days3 = load_config(overrides={"rank": {"min_train_users": 2}}, environ={})  # label_days 3 (default)
    assert rank_labels_by_days(days3, inter(3), D + dt.timedelta(days=2))  # Nov 21 is in the last 3 days
    assert not rank_labels_by_days(days3, inter(3), D + dt.timedelta(days=4))
    fixed = load_config(overrides={"rank": {"labels": "steps", "min_train_users": 2}}, environ={})
    assert not rank_labels_by_days(fixed, inter(3), D)


def test_shuffle_partitions_follow_the_input_size(spark, tmp_path):
    from recsys.config import SparkConfig
    from recsys.spark import partitions_for, size_shuffles

    mib = 2**20
    assert partitions_for(75 * mib, 8, 16) == 8  # 100k users' events: the floor
    assert partitions_for(627 * mib, 8, 16) == 40  # 1M users' events: 16 MiB each
    assert partitions_for(627 * mib, 8, 0) == 8  # sizing off: always the floor
    for day, n in (("a", 3), ("b", 2)):
        (tmp_path / day).mkdir()
        (tmp_path / day / "part.parquet").write_bytes(b"x" * n * mib)
    before = spark.conf.get("spark.sql.shuffle.partitions")
    try:
        got = size_shuffles(spark, SparkConfig(shuffle_partitions=2, input_mb_per_partition=1),
                            [str(tmp_path / "a"), f"file://{tmp_path / 'b'}"])  # fmt: skip
        assert got == 5 and spark.conf.get("spark.sql.shuffle.partitions") == "5"
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", before)
