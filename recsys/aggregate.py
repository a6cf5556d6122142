"""Validate and aggregate with Spark: pure DataFrame -> DataFrame transforms + a thin main.

Outputs for a run (under features/<split>/, split = "full" (history before the run
date, used to serve), "train" (when evaluating: history before the time split, or
without each user's last steps) and "rank" (the models' split without each user's last
rank.label_steps steps, the ranker's training state); see `_splits`):
- sequences:   user_id, items array<string>, types array<string>, ts array<timestamp>
               (positive events in time order, consecutive repeats of one item collapsed
               to its strongest event type, last model.max_history steps), codes
               array<int> (the items' item_codes: co-visitation's input, see there)
- item_stats:  every catalog item with n_events, n_users, pop_score, trend_score,
               first_event_ts, category, created_at, available
- covisitation: item_id, neighbor_id, score, rank (directed: neighbour follows item)
- exclusions:  user_id, item_id the user must not be shown again (per exclude_policy)
and once per run: catalog (clean items), holdout and rank_labels (user_id, item_id, ts,
grade = strongest event weight), quarantine/.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import TYPE_CHECKING, Any

from recsys import jsonio
from recsys.contract import (
    CATALOG_COLUMNS,
    CATALOG_REQUIRED,
    EVENT_COLUMNS,
    EVENT_REQUIRED,
    InputError,
    Partition,
    event_window,
    list_partitions,
    read_raw,
    select_catalog_partition,
    select_event_partitions,
)

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

    from recsys.config import Config, RetrieveConfig
    from recsys.rundir import RunDir

log = logging.getLogger(__name__)


class RejectRateError(RuntimeError):
    """Too many input rows were rejected; the quarantine was written for inspection."""


def _day_start(d: dt.date) -> dt.datetime:
    return dt.datetime.combine(d, dt.time(0), tzinfo=dt.UTC)


def _ts_lit(d: dt.date) -> Column:
    from pyspark.sql import functions as F

    # A naive UTC literal: the session zone is UTC, so this is midnight UTC of d.
    return F.lit(dt.datetime.combine(d, dt.time(0))).cast("timestamp")


def parse_ts(c: Column) -> Column:
    """ISO-8601 text or an epoch number -> timestamp; null where unparseable (never raises).

    Epoch numbers are read by magnitude: < 1e11 seconds, < 1e14 milliseconds, < 1e17
    microseconds, else nanoseconds (parquet nanosecond timestamps, as pandas writes them,
    arrive as longs). Seconds below 1e11 cover dates up to the year 5138.
    """
    from pyspark.sql import functions as F

    s = F.trim(c)
    x = s.try_cast("double")
    a = F.abs(x)
    secs = F.when(a < 1e11, x).when(a < 1e14, x / 1e3).when(a < 1e17, x / 1e6).otherwise(x / 1e9)
    return F.when(s.rlike(r"^-?\d+(\.\d+)?$"), F.timestamp_seconds(secs)).otherwise(F.try_to_timestamp(s))


def _blank(c: Column) -> Column:
    from pyspark.sql import functions as F

    return c.isNull() | (F.trim(c) == "")


def bad_id(c: Column, pattern: str, max_length: int) -> Column:
    """True where a (trimmed, non-blank) id breaks the id rule: too long or outside the
    allowed characters."""
    from pyspark.sql import functions as F

    return (F.length(c) > max_length) | ~c.rlike(f"^(?:{pattern})$")


def _finite(c: Column) -> Column:
    from pyspark.sql import functions as F

    return ~F.isnan(c) & (F.abs(c) < float("inf"))


def validate_events(
    raw: DataFrame,
    catalog_ids: DataFrame,
    run_date: dt.date,
    known_types: list[str],
    bot_max_events_per_day: int,
    window_start: dt.date | None = None,
    id_pattern: str = r"[^\s\x00-\x1f\x7f\x{fffd}]+",
    id_max_length: int = 256,
    annotated: bool = False,
) -> Any:
    """Split raw events into (clean typed rows, quarantined raw rows with `reason`);
    annotated=True: the one frame of every row with its `reason` (null = clean), which
    split_annotated splits (the caller persists it so both outputs come from one pass).

    Ids are trimmed first. Reasons, first match wins: unparseable_row, missing_<field>,
    bad_user_id / bad_item_id (id rule: id_pattern, id_max_length), bad_timestamp,
    unknown_event_type, future_timestamp (ts >= run date 00:00 UTC), outside_window (ts
    before window_start: an old event inside a recent partition), bad_value (not a
    finite number), unknown_item, duplicate (exact repeat of user/item/type/ts/session;
    the first is kept), bot_like_user (every otherwise clean event of a user with more
    than bot_max_events_per_day clean events on one UTC day).
    """
    from pyspark.sql import functions as F

    df = raw.withColumn("_user", F.trim("user_id")).withColumn("_item", F.trim("item_id"))
    df = df.withColumn("event_type_n", F.lower(F.trim("event_type")))
    df = df.withColumn("ts_p", parse_ts(F.col("ts")))
    df = df.withColumn("value_p", F.col("value").try_cast("double"))
    ids = catalog_ids.select(F.col("item_id").alias("_cat_item")).distinct()
    df = df.join(F.broadcast(ids), df._item == ids._cat_item, "left")
    reason = _row_reason(run_date, known_types, window_start, id_pattern, id_max_length)
    df = _cross_row_reasons(df.withColumn("reason", reason), bot_max_events_per_day)
    return df if annotated else split_annotated(df)


def _row_reason(run_date: dt.date, known_types: list[str], window_start: dt.date | None, id_pattern: str,
                id_max_length: int) -> Any:  # fmt: skip
    """The first rule a row breaks on its own (null = none), as one Column over the
    parsed columns of validate_events."""
    from pyspark.sql import functions as F

    reason = F.when(F.col("_corrupt").isNotNull(), F.lit("unparseable_row"))
    for c in EVENT_REQUIRED:
        reason = reason.when(_blank(F.col(c)), F.lit(f"missing_{c}"))
    return (
        reason.when(bad_id(F.col("_user"), id_pattern, id_max_length), F.lit("bad_user_id"))
        .when(bad_id(F.col("_item"), id_pattern, id_max_length), F.lit("bad_item_id"))
        .when(F.col("ts_p").isNull(), F.lit("bad_timestamp"))
        .when(~F.col("event_type_n").isin(known_types), F.lit("unknown_event_type"))
        .when(F.col("ts_p") >= _ts_lit(run_date), F.lit("future_timestamp"))
        .when(
            F.lit(window_start is not None) & (F.col("ts_p") < _ts_lit(window_start or run_date)),
            F.lit("outside_window"),
        )
        .when(F.col("value").isNotNull() & (F.col("value_p").isNull() | ~_finite(F.col("value_p"))), F.lit("bad_value"))
        .when(F.col("_cat_item").isNull(), F.lit("unknown_item"))
    )


def _cross_row_reasons(df: DataFrame, bot_max_events_per_day: int) -> DataFrame:
    """`duplicate` and `bot_like_user` on top of the per-row reasons (rows still clean only).

    The two cross-row rules share one exchange (by user) and one sort: the duplicate key
    leads with the user and the day, so the per-day count and the per-user maximum read
    prefixes of the same order. A grouped count joined back made Spark compute the
    parse, the catalog join and the duplicate window twice (at 100k users the stage took
    95-108 s, now 77-83 s: docs/benchmarks.md, "Validate: one exchange and one sort")."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    df = df.withColumn("_day", F.to_date("ts_p")).repartition("_user")
    key = ["_user", "_day", "_item", "event_type_n", "ts_p", "session_id"]
    dup_w = Window.partitionBy(*key).orderBy("source_file", "dt")
    repeat = F.row_number().over(dup_w) > 1
    df = df.withColumn(
        "reason", F.when(F.col("reason").isNull() & repeat, F.lit("duplicate")).otherwise(F.col("reason"))
    )
    ok = F.col("reason").isNull()
    df = df.withColumn("_day_n", F.sum(ok.cast("int")).over(Window.partitionBy("_user", "_day")))
    bot = F.max("_day_n").over(Window.partitionBy("_user")) > bot_max_events_per_day
    df = df.withColumn("reason", F.when(ok & bot, F.lit("bot_like_user")).otherwise(F.col("reason")))
    return df.drop("_day", "_day_n")


def split_annotated(df: DataFrame) -> tuple[DataFrame, DataFrame]:
    """Events annotated with `reason` -> (clean typed rows, quarantined raw rows)."""
    from pyspark.sql import functions as F

    clean = df.where(F.col("reason").isNull()).select(
        F.col("_user").alias("user_id"),
        F.col("_item").alias("item_id"),
        F.col("event_type_n").alias("event_type"),
        F.col("ts_p").alias("ts"),
        "session_id",
        F.col("value_p").alias("value"),
        "dt",
    )
    quarantine = df.where(F.col("reason").isNotNull()).select(*EVENT_COLUMNS, "_corrupt", "dt", "source_file", "reason")
    return clean, quarantine


def _clean_text(c: Column, max_chars: int) -> Column:
    """NUL bytes removed (PostgreSQL text refuses them), trimmed, capped."""
    from pyspark.sql import functions as F

    return F.substring(F.trim(F.regexp_replace(c, "\u0000", "")), 1, max_chars)


def validate_catalog(
    raw: DataFrame,
    run_date: dt.date | None = None,
    id_pattern: str = r"[^\s\x00-\x1f\x7f\x{fffd}]+",
    id_max_length: int = 256,
    title_max_chars: int = 300,
    description_max_chars: int = 5000,
) -> tuple[DataFrame, DataFrame]:
    """(clean items, quarantined rows). Ids are trimmed first, so ' a' and 'a' are one
    item. Reasons: unparseable_row, missing_<field>, bad_item_id, bad_price (not a
    finite number >= 0), duplicate_item_id (the first row per trimmed id by file order
    is kept). Text is cleaned (NUL removed, capped); a created_at after the run date is
    unknown, not 'newest forever': it becomes null and `created_at_repaired` is true."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    df = raw.withColumn("_item", F.trim("item_id"))
    df = df.withColumn("price_p", F.col("price").try_cast("double"))
    reason = F.when(F.col("_corrupt").isNotNull(), F.lit("unparseable_row"))
    for c in CATALOG_REQUIRED:
        reason = reason.when(_blank(F.col(c)), F.lit(f"missing_{c}"))
    reason = reason.when(bad_id(F.col("_item"), id_pattern, id_max_length), F.lit("bad_item_id"))
    bad_price = F.col("price_p").isNull() | ~_finite(F.col("price_p")) | (F.col("price_p") < 0)
    reason = reason.when(F.col("price").isNotNull() & bad_price, F.lit("bad_price"))
    df = df.withColumn("reason", reason)
    w = Window.partitionBy("_item").orderBy(F.col("reason").isNotNull(), "source_file", "title")
    df = df.withColumn(
        "reason",
        F.when(F.col("reason").isNull() & (F.row_number().over(w) > 1), F.lit("duplicate_item_id")).otherwise(
            F.col("reason")
        ),
    )
    avail = F.lower(F.trim("available"))
    created = parse_ts(F.col("created_at"))
    future = created >= _ts_lit(run_date) if run_date else F.lit(False)
    clean = df.where(F.col("reason").isNull()).select(
        F.col("_item").alias("item_id"),
        _clean_text(F.col("title"), title_max_chars).alias("title"),
        F.coalesce(_clean_text(F.col("category"), 500), F.lit("")).alias("category"),
        F.coalesce(_clean_text(F.col("brand"), 200), F.lit("")).alias("brand"),
        F.coalesce(_clean_text(F.col("description"), description_max_chars), F.lit("")).alias("description"),
        F.col("price_p").alias("price"),
        # Missing or unrecognised availability means available (the contract default).
        (~avail.isin("false", "0", "no", "f")).alias("available"),
        F.when(F.coalesce(future, F.lit(False)), F.lit(None)).otherwise(created).cast("timestamp").alias("created_at"),
        F.coalesce(future, F.lit(False)).alias("created_at_repaired"),
    )
    clean = clean.withColumn("available", F.coalesce(F.col("available"), F.lit(True)))
    quarantine = df.where(F.col("reason").isNotNull()).select(
        *CATALOG_COLUMNS, "_corrupt", "dt", "source_file", "reason"
    )
    return clean, quarantine


def interactions(clean: DataFrame, weights: dict[str, float], min_rating_positive: float) -> DataFrame:
    """Add `weight` (from config) and `positive` (counts as a training/eval positive)."""
    from pyspark.sql import functions as F

    wmap = F.create_map(*[x for k, v in sorted(weights.items()) for x in (F.lit(k), F.lit(float(v)))])
    w = F.coalesce(wmap[F.col("event_type")], F.lit(0.0))
    pos = (w > 0) & (
        (F.col("event_type") != "rate") | F.col("value").isNull() | (F.col("value") >= min_rating_positive)
    )
    return clean.withColumn("weight", w).withColumn("positive", pos)


def item_codes(catalog: DataFrame) -> DataFrame:
    """(item_id, code int): each catalog item's position in item_id order. Codes sort as
    the ids do, so co-visitation on codes keeps its ties by neighbour id."""
    from pyspark.sql import functions as F

    # Range-partitioned and sorted by id, numbered inside each partition
    # (monotonically_increasing_id counts a partition's rows from partition << 33) and
    # offset by the sizes of the partitions before it: one row per partition reaches the
    # driver, and no exchange follows the range partitioning. A window over a constant
    # key ran in one task, and Spark, which drops a constant partition key, warned of it
    # 7 times a night. Kept (_cache) so the counts and the codes read the same rows in
    # the same order; a lost block is recomputed through the same shuffle.
    part = F.spark_partition_id()
    ids = _cache(catalog.select("item_id").distinct().repartitionByRange("item_id").sortWithinPartitions("item_id"))
    sizes = sorted((int(r["p"]), int(r["count"])) for r in ids.groupBy(part.alias("p")).count().collect())
    starts = [sum(n for _, n in sizes[:i]) for i in range(len(sizes))]
    offset = F.create_map(*[F.lit(x) for (p, _), o in zip(sizes, starts, strict=True) for x in (p, o)])
    number = F.monotonically_increasing_id() - F.shiftleft(part.cast("long"), 33)
    return ids.select("item_id", (number + offset[part]).cast("int").alias("code"))


def sequences(inter: DataFrame, cutoff: dt.date, max_len: int, codes: DataFrame | None = None) -> DataFrame:
    """Each user's positive events before cutoff as ordered arrays (see module doc);
    with codes (item_codes), also the items' codes (an item without one gets null)."""
    from pyspark.sql import functions as F

    ev = inter.where(F.col("positive") & (F.col("ts") < _ts_lit(cutoff)))
    fields = ["ts", "item_id", "event_type", "weight"]
    if codes is not None:
        # A broadcast hash join keeps the events' partitioning and order: no exchange.
        ev, fields = ev.join(F.broadcast(codes), "item_id", "left"), [*fields, "code"]
    # One aggregation per user, on events already partitioned and sorted by user (by_user),
    # and the runs collapsed inside each user's array. The windows and group-bys this
    # replaces sorted every event twice more (by run, then by run descending): 2x slower.
    # e [E]: the user's events in step order (ts, item_id, event_type); b [R+1]: where
    # each run of one item starts, then E; the last max_len runs are kept.
    e = ev.groupBy("user_id").agg(F.sort_array(F.collect_list(F.struct(*fields))).alias("e"))
    e = e.select("user_id", "e", F.expr(
        "concat(filter(sequence(0, size(e) - 1), i -> i = 0 OR e[i].item_id != e[i - 1].item_id), array(size(e)))"
    ).alias("b"))  # fmt: skip
    # A run is its first event's item, time (and code), and its strongest event type:
    # the max of (weight, event_type) over its events, as max(struct(...)) ranks them.
    run = (
        "named_struct('item_id', e[b[k]].item_id, 'ts', e[b[k]].ts, 'event_type', array_max(transform("
        "slice(e, b[k] + 1, b[k + 1] - b[k]), x -> named_struct('w', x.weight, 't', x.event_type))).t"
        + (", 'code', e[b[k]].code)" if codes is not None else ")")
    )
    runs = F.expr(f"transform(sequence(greatest(size(b) - 1 - {int(max_len)}, 0), size(b) - 2), k -> {run})")
    r = e.select("user_id", runs.alias("r"))
    arrays = {"items": "item_id", "types": "event_type", "ts": "ts", "codes": "code"}
    return r.select("user_id", *(F.expr(f"transform(r, s -> s.{f})").alias(name)
                                 for name, f in arrays.items() if f != "code" or codes is not None))  # fmt: skip


def item_stats(inter: DataFrame, catalog: DataFrame, cutoff: dt.date, trending_days: int) -> DataFrame:
    """Popularity and trend per catalog item from events before cutoff (zeros if none)."""
    from pyspark.sql import functions as F

    start_trend = cutoff - dt.timedelta(days=trending_days)
    ev = inter.where(F.col("positive") & (F.col("ts") < _ts_lit(cutoff)))
    # Two plain sums instead of countDistinct beside sums: Spark plans countDistinct
    # with other aggregates as an Expand that copies every event row once per distinct
    # group (measured 10x DuckDB on this step); per (item, user) first, the pairs are
    # far fewer than the events, and n_users is then a plain count.
    per_user = ev.groupBy("item_id", "user_id").agg(
        F.count("*").alias("n"),
        F.sum("weight").alias("w"),
        F.sum(F.when(F.col("ts") >= _ts_lit(start_trend), F.col("weight")).otherwise(0.0)).alias("t"),
        F.min("ts").alias("first"),
    )
    agg = per_user.groupBy("item_id").agg(
        F.sum("n").alias("n_events"),
        F.count("*").alias("n_users"),
        F.sum("w").alias("pop_score"),
        F.sum("t").alias("trend_score"),
        F.min("first").alias("first_event_ts"),
    )
    out = catalog.select("item_id", "category", "created_at", "available").join(agg, "item_id", "left")
    return out.select(
        "item_id",
        F.coalesce("n_events", F.lit(0)).cast("long").alias("n_events"),
        F.coalesce("n_users", F.lit(0)).cast("long").alias("n_users"),
        F.coalesce("pop_score", F.lit(0.0)).alias("pop_score"),
        F.coalesce("trend_score", F.lit(0.0)).alias("trend_score"),
        "first_event_ts",
        "category",
        "created_at",
        "available",
    )


def covisitation(
    seqs: DataFrame, window: int, top_n: int, backward: float = 0.0, every_pair: bool = False
) -> DataFrame:
    """Co-occurrence of what follows: b after a within `window` steps of one user's
    sequence scores 1/distance; summed over users, top_n neighbours per item. backward
    > 0 also reads pairs the other way, b -> a at backward x the score: after each list
    is cut to top_n (every_pair False: a shuffle of items x top_n rows instead of a
    second one over every step's pairs), or on every step's pair before the cut
    (every_pair True: exact, twice the pairs; the small-data regime)."""
    from pyspark.sql import functions as F

    # Pairs straight from each user's array (offsets 1..window), one row in, its pairs
    # out: no self-join of the exploded positions on user_id, which sorted every step
    # and compared each with every other of its user (16.9 s vs DuckDB's 2.5 at 100k
    # users; see docs/benchmarks.md). sequence(0, -1) counts down, hence the IF.
    pair = "named_struct('item_id', items[i], 'neighbor_id', items[i + d], 'w', 1.0D / d)"
    if every_pair and backward > 0:
        back = f"named_struct('item_id', items[i + d], 'neighbor_id', items[i], 'w', {float(backward)}D / d)"
        pair = f"array({pair}, {back})"
    else:
        pair = f"array({pair})"
    pairs = F.expr(
        f"flatten(flatten(transform(sequence(1, {int(window)}), d -> IF(size(items) > d, "
        f"transform(sequence(0, size(items) - d - 1), i -> {pair}), array()))))"
    )
    ex = seqs.select(F.explode(pairs).alias("p")).select("p.*").where(F.col("item_id") != F.col("neighbor_id"))
    top = _top_neighbors(ex, top_n)
    if backward > 0 and not every_pair:
        swapped = top.select(F.col("neighbor_id").alias("item_id"), F.col("item_id").alias("neighbor_id"),
                             (F.col("score") * float(backward)).alias("w"))  # fmt: skip
        top = _top_neighbors(
            top.select("item_id", "neighbor_id", F.col("score").alias("w")).unionByName(swapped), top_n, by_item=True
        )
    return top


def coded_covisitation(seqs: DataFrame, codes: DataFrame, window: int, top_n: int, backward: float,
                       every_pair: bool = False) -> DataFrame:  # fmt: skip
    """covisitation on the sequences' codes (sequences(..., codes)), decoded to ids: the
    same table, with the pairs' aggregation and ranking hashing and sorting ints, not
    id strings (at 100k users 8.1 s against 11.6 s a split)."""
    from pyspark.sql import functions as F

    return decode_items(covisitation(seqs.select(F.col("codes").alias("items")), window, top_n, backward, every_pair),
                        codes)  # fmt: skip


def decode_items(pairs: DataFrame, codes: DataFrame) -> DataFrame:
    """Co-visitation computed on item_codes back to ids: (item_id, neighbor_id, score,
    rank). Both lookups are broadcast joins of the catalog-sized codes."""
    from pyspark.sql import functions as F

    ids = codes.select(F.col("code").alias("item_id"), F.col("item_id").alias("_item"))
    nbs = codes.select(F.col("code").alias("neighbor_id"), F.col("item_id").alias("_neighbor"))
    joined = pairs.join(F.broadcast(ids), "item_id").join(F.broadcast(nbs), "neighbor_id")
    return joined.select(F.col("_item").alias("item_id"), F.col("_neighbor").alias("neighbor_id"), "score", "rank")


def _top_neighbors(pairs: DataFrame, top_n: int, by_item: bool = False) -> DataFrame:
    """(item_id, neighbor_id, w) rows -> each item's top_n neighbours by summed w:
    (item_id, neighbor_id, score, rank), ties by neighbour id. by_item: the rows are
    exchanged by item once, and the sum and the ranking both run on that partitioning;
    else the sum is taken map-side first, exchanged by pair, then again by item."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    # by_item is for rows that barely aggregate (the kept lists read both ways: a pair at
    # most twice), where the map-side sum saves nothing and one exchange of two is
    # spared: the whole co-visitation step 12.1-13.5 s -> 10.4-10.5 s at 100k users.
    # Every step's pairs repeat (8.7M rows, 4.4M distinct at 100k), and there summing
    # before the exchange measured faster (11.9-13.4 s against 14.2-15.7 s).
    if by_item:
        pairs = pairs.repartition("item_id")
    # Rounded: a float sum depends on the order rows arrive in, which the partitioning
    # sets, and 1e-11 apart broke ties between equal scores (1 + 1/3 vs 1/3 + 1) at the
    # top_n boundary differently from run to run (182 of 1.8M pairs at 100k users).
    scored = pairs.groupBy("item_id", "neighbor_id").agg(F.round(F.sum("w"), 9).alias("score"))
    w = Window.partitionBy("item_id").orderBy(F.col("score").desc(), F.col("neighbor_id"))
    return (
        scored.withColumn("rank", F.row_number().over(w))
        .where(F.col("rank") <= top_n)
        .select("item_id", "neighbor_id", "score", F.col("rank").cast("int").alias("rank"))
    )


def exclusions(inter: DataFrame, policy: str, cutoff: dt.date) -> DataFrame:
    """(user_id, item_id) pairs never to be recommended again, from events before cutoff."""
    from pyspark.sql import functions as F

    ev = inter.where(F.col("ts") < _ts_lit(cutoff))
    if policy == "purchased":
        ev = ev.where(F.col("event_type") == "purchase")
    elif policy == "none":
        ev = ev.where(F.lit(False))
    return ev.select("user_id", "item_id").distinct()


def targets(positives: DataFrame) -> DataFrame:
    """Positive events -> (user_id, item_id, ts = first time, grade = strongest weight)."""
    from pyspark.sql import functions as F

    return positives.groupBy("user_id", "item_id").agg(F.min("ts").alias("ts"), F.max("weight").alias("grade"))


def holdout(inter: DataFrame, start: dt.date, end: dt.date) -> DataFrame:
    """Positive (user, item) pairs with start <= ts < end: the time protocol's targets."""
    from pyspark.sql import functions as F

    ev = inter.where(F.col("positive") & (F.col("ts") >= _ts_lit(start)) & (F.col("ts") < _ts_lit(end)))
    return targets(ev)


def cut_last_steps(inter: DataFrame, n: int) -> tuple[DataFrame, DataFrame]:
    """(before, after) for a per-user leave-last-n split.

    Steps are positive events with consecutive repeats of one item collapsed (as in
    `sequences`), ordered by (ts, item_id, event_type). For every user with more than n
    steps, the last n steps are cut: `after` holds the positive events from the first
    cut step on (the targets), `before` every event (positive or not) strictly before
    it. Users with n or fewer steps are not cut: all their events stay in `before`.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = Window.partitionBy("user_id").orderBy("ts", "item_id", "event_type")
    df = inter.withColumn("_ord", F.row_number().over(order))
    w = Window.partitionBy("user_id").orderBy("_ord")
    pos = df.where(F.col("positive")).withColumn("_prev", F.lag("item_id").over(w))
    pos = pos.withColumn("_new", (F.col("_prev").isNull() | (F.col("_prev") != F.col("item_id"))).cast("int"))
    pos = pos.withColumn("_step", F.sum("_new").over(w.rowsBetween(Window.unboundedPreceding, 0)))
    pos = pos.withColumn("_steps", F.max("_step").over(Window.partitionBy("user_id")))
    cut = (
        pos.where((F.col("_steps") > n) & (F.col("_step") > F.col("_steps") - n))
        .groupBy("user_id")
        .agg(F.min("_ord").alias("_cut"))
    )
    df = df.join(cut, "user_id", "left")
    keep = F.col("_cut").isNull() | (F.col("_ord") < F.col("_cut"))
    cols = inter.columns
    before = df.where(keep).select(*cols)
    after = df.where(~keep & F.col("positive")).select(*cols)
    return before, after


def require_rows(raw: DataFrame, last: Partition, min_rows: int) -> None:
    """Freshness: yesterday's partition must hold min_rows raw rows; a folder with only
    _SUCCESS or empty files is an export that has not landed (issue 8, item 9)."""
    from pyspark.sql import functions as F

    if min_rows <= 0:
        return
    n = raw.where(F.col("dt") == last.date.isoformat()).limit(min_rows).count()
    if n < min_rows:
        raise InputError(
            f"event partition dt={last.date} holds {n} rows, fewer than events.min_rows_last_partition="
            f"{min_rows} ({last.path}); the upstream export has not landed whole"
        )


def _cache(df: DataFrame) -> DataFrame:
    """Keep df for the passes that reuse it on local disk, not in the JVM heap: the
    operating system's page cache keeps it in memory when there is room, and the heap
    stays for the tasks (validate's heap cache at 1M users died of OutOfMemoryError)."""
    from pyspark import StorageLevel

    return df.persist(StorageLevel.DISK_ONLY)


def by_user(df: DataFrame, partitions: int) -> DataFrame:
    """df hash-partitioned by user_id and sorted inside each partition in the order of
    a user's steps (user_id, ts, item_id, event_type). Cached so, every split's
    per-user windows (sequences, cut_last_steps) run on it without an exchange or a
    sort of their own: one shuffle of the events for the night, not one per split.
    partitions must be the session's spark.sql.shuffle.partitions (size_shuffles sets
    it): with any other count Spark exchanges again to match it."""
    return df.repartition(partitions, "user_id").sortWithinPartitions("user_id", "ts", "item_id", "event_type")


def _write(df: DataFrame, path: str, files: int | None = None) -> None:
    """Write parquet. files=None: one file per partition of the last stage (after a
    shuffle, adaptive execution merges small partitions, so a small output is one
    file). files=n: at most n files, for outputs without a shuffle of their own.
    Never coalesce a shuffled result: coalesce(1) is a narrow dependency, so the whole
    last stage (the window of sequences, the ranking of co-visitation, a final
    aggregation) ran in one task on one core (docs/benchmarks.md, 300,000 users)."""
    (df if files is None else df.coalesce(files)).write.mode("overwrite").parquet(path)


def catalog_for(spark: SparkSession, cfg: Config, run_date: dt.date) -> tuple[Partition, DataFrame, DataFrame]:
    """The catalog partition a night reads and its (clean, quarantine) rows."""
    ev = cfg.events
    root = cfg.paths.data_root.rstrip("/")
    part = select_catalog_partition(list_partitions(spark, f"{root}/catalog"), run_date, ev.catalog_max_age_days)
    clean, quarantine = validate_catalog(
        read_raw(spark, [part], CATALOG_COLUMNS), run_date, ev.id_pattern, ev.id_max_length,
        ev.title_max_chars, ev.description_max_chars,
    )  # fmt: skip
    return part, clean, quarantine


def run_validate(cfg: Config, rd: RunDir) -> dict[str, object]:
    """Read the input contract for run_date, write validated/ and quarantine/."""

    from recsys.spark import get_spark, size_shuffles

    t0 = time.time()
    run_date = rd.date
    spark = get_spark(cfg.spark, app_name=f"recsys-validate-{run_date}")
    root = cfg.paths.data_root.rstrip("/")
    ev = cfg.events
    ev_parts = select_event_partitions(list_partitions(spark, f"{root}/events"), run_date, ev.lookback_days)
    cat_part, cat_clean, cat_q = catalog_for(spark, cfg, run_date)
    log.info(
        "validate: %d event partitions %s..%s, catalog dt=%s",
        len(ev_parts), ev_parts[0].date, ev_parts[-1].date, cat_part.date,
    )  # fmt: skip
    _write(cat_clean, str(rd.path("validated", "catalog")), files=1)
    _write(cat_q, str(rd.path("quarantine", "catalog")), files=1)
    cat_clean = spark.read.parquet(str(rd.path("validated", "catalog")))
    n_items = cat_clean.count()
    if n_items == 0:
        raise InputError(f"catalog partition {cat_part.path} holds no valid item")
    n_shuffle = size_shuffles(spark, cfg.spark, [p.path for p in ev_parts])
    raw_events = read_raw(spark, ev_parts, EVENT_COLUMNS)
    require_rows(raw_events, ev_parts[-1], ev.min_rows_last_partition)
    annotated = validate_events(
        raw_events, cat_clean, run_date, sorted(ev.weights), ev.bot_max_events_per_day,
        event_window(run_date, ev.lookback_days)[0], ev.id_pattern, ev.id_max_length, annotated=True,
    )  # fmt: skip
    # One pass over the raw files: the two outputs read the annotated rows from the
    # cache instead of re-running parse, dedup window and bot join for each (measured
    # in docs/benchmarks.md, "Spark vs DuckDB"). At 1M users (50M rows) the default
    # MEMORY_AND_DISK filled the 4g heap with cached blocks and the tasks died of
    # OutOfMemoryError reading them back and reading the broadcast joins.
    annotated = _cache(annotated)
    clean, quarantine = split_annotated(annotated)
    _write(clean, str(rd.path("validated", "events")))
    # The rows are cached by now: one file costs one task's read of the cache.
    _write(quarantine, str(rd.path("quarantine", "events")), files=1)
    annotated.unpersist()

    counts = _validated_counts(spark, rd)
    counts.update({
        "event_partitions": {"first": str(ev_parts[0].date), "last": str(ev_parts[-1].date), "n": len(ev_parts)},
        "catalog_partition": str(cat_part.date), "catalog_items": n_items, "shuffle_partitions": n_shuffle,
        "catalog_repaired": {"future_created_at": cat_clean.where("created_at_repaired").count()},
    })  # fmt: skip
    total, n_clean, q_counts = counts["events_raw"], counts["events_clean"], counts["events_quarantined"]
    reject_rate = (total - n_clean) / total if total else 0.0
    log.info(
        "validate: %d raw events, %d clean, quarantined %s (reject rate %.4f)", total, n_clean, q_counts, reject_rate
    )
    if reject_rate > cfg.events.max_reject_rate:
        raise RejectRateError(
            f"reject rate {reject_rate:.3f} is above events.max_reject_rate={cfg.events.max_reject_rate} "
            f"({q_counts}); the rejected rows are in {rd.path('quarantine', 'events')}"
        )
    if n_clean == 0:
        raise InputError("no valid events in the window: nothing to learn from")
    counts["seconds"] = round(time.time() - t0, 1)
    return counts


def _validated_counts(spark: Any, rd: RunDir) -> dict[str, Any]:
    """Row counts read back from validate's outputs: clean and quarantined events (by
    reason), the reject rate, quarantined catalog rows (by reason)."""

    def reasons(path: str) -> dict[str, int]:
        rows = spark.read.parquet(path).groupBy("reason").count().collect()
        return {r["reason"]: int(r["count"]) for r in sorted(rows, key=lambda r: r["reason"])}

    q_counts = reasons(str(rd.path("quarantine", "events")))
    n_clean = spark.read.parquet(str(rd.path("validated", "events"))).count()
    total = n_clean + sum(q_counts.values())
    return {
        "events_raw": total, "events_clean": n_clean, "events_quarantined": q_counts,
        "reject_rate": round((total - n_clean) / total, 6) if total else 0.0,
        "catalog_quarantined": reasons(str(rd.path("quarantine", "catalog"))),
    }  # fmt: skip


def _splits(
    cfg: Config, inter: DataFrame, run_date: dt.date
) -> tuple[dict[str, tuple[DataFrame, dt.date]], dict[str, DataFrame], str]:
    """The feature splits as (interactions, cutoff), their target tables, and what the
    ranker's labels are ("days" or "steps").

    full   everything before the run date (serving)
    train  evaluating: before the time split, or without each user's last steps
    rank   the ranker's training state: the models' split (train or full) before its
           last rank.label_days, or without each user's last rank.label_steps steps
           (see rank_labels_by_days); what was held out becomes rank_labels
    """
    from pyspark.sql import functions as F

    ec = cfg.evaluate
    splits = {"full": (inter, run_date)}
    tables: dict[str, DataFrame] = {}
    by_days = False
    if ec.enabled and ec.protocol == "time":
        split_date = run_date - dt.timedelta(days=ec.holdout_days)
        splits["train"] = (inter, split_date)
        tables["holdout"] = holdout(inter, split_date, run_date)
    elif ec.enabled:
        before, after = cut_last_steps(inter, ec.leave_last_n)
        splits["train"] = (_cache(before), run_date)
        tables["holdout"] = targets(after)
    if cfg.rank.enabled:
        base, cutoff = splits["train"] if "train" in splits else splits["full"]
        base = base.where(F.col("ts") < _ts_lit(cutoff))
        by_days = rank_labels_by_days(cfg, base, cutoff)
        if by_days:
            label_start = cutoff - dt.timedelta(days=cfg.rank.label_days)
            # A filter of the cached events: cheap, and it keeps their partitioning.
            splits["rank"] = (base.where(F.col("ts") < _ts_lit(label_start)), label_start)
            tables["rank_labels"] = holdout(base, label_start, cutoff)
        else:
            before, after = cut_last_steps(base, cfg.rank.label_steps)
            splits["rank"] = (_cache(before), cutoff)
            tables["rank_labels"] = targets(after)
    return splits, tables, ("days" if cfg.rank.enabled and by_days else "steps")


def rank_labels_by_days(cfg: Config, base: DataFrame, cutoff: dt.date) -> bool:
    """Whether the ranker learns from the last rank.label_days (what a user did the day
    after the state it is ranked from: a nightly page's job) rather than each user's
    last rank.label_steps steps (next item). `auto`: days when at least 10% of the
    users (and rank.min_train_users) were active in those days; users of data sets
    like MovieLens rarely return, and there the next step is the only label."""
    from pyspark.sql import functions as F

    mode = cfg.rank.labels
    if mode != "auto":
        return mode == "days"
    start = cutoff - dt.timedelta(days=cfg.rank.label_days)
    row = (
        base.where(F.col("positive"))
        .agg(
            F.countDistinct("user_id").alias("users"),
            F.countDistinct(F.when(F.col("ts") >= _ts_lit(start), F.col("user_id"))).alias("recent"),
        )
        .first()
    )
    assert row is not None  # an aggregate always returns one row
    users, recent = int(row["users"] or 0), int(row["recent"] or 0)
    by_days = recent >= max(cfg.rank.min_train_users, 0.1 * users)
    log.info("aggregate: %d of %d users active in the last %d day(s) before %s: rank labels by %s",
             recent, users, cfg.rank.label_days, cutoff, "days" if by_days else "steps")  # fmt: skip
    return by_days


def covis_params(rc: RetrieveConfig, n_events: int) -> tuple[int, bool]:
    """(window, every_pair) for a night of n_events events: the small-data regime up to
    retrieve.covis_small_events, so every split of one night counts alike."""
    if n_events <= rc.covis_small_events:
        return rc.covis_small_window, True
    return rc.covis_window, False


def write_split(cfg: Config, rd: RunDir, name: str, ev: DataFrame, cutoff: dt.date, catalog: DataFrame,
                codes: DataFrame, covis: tuple[int, bool]) -> int:  # fmt: skip
    """One split's features (sequences, item_stats, covisitation with covis = (window,
    every_pair), exclusions) from its events before cutoff; logs each output's seconds;
    returns the split's user count."""
    spark, out = ev.sparkSession, lambda table: str(rd.path("features", name, table))
    secs: dict[str, float] = {}
    t = time.time()
    _write(sequences(ev, cutoff, cfg.model.max_history, codes), out("sequences"))
    seqs = spark.read.parquet(out("sequences"))
    secs["sequences"], t = round(time.time() - t, 1), time.time()
    _write(item_stats(ev, catalog, cutoff, cfg.retrieve.trending_days), out("item_stats"))
    secs["item_stats"], t = round(time.time() - t, 1), time.time()
    rc = cfg.retrieve
    window, every_pair = covis
    cov = coded_covisitation(seqs, codes, window, rc.covis_neighbors, rc.covis_backward, every_pair)
    _write(cov, out("covisitation"))
    secs["covisitation"], t = round(time.time() - t, 1), time.time()
    _write(exclusions(ev, cfg.events.exclude_policy, cutoff), out("exclusions"))
    secs["exclusions"] = round(time.time() - t, 1)
    users = seqs.count()
    log.info("aggregate: %s split (before %s, %d users), seconds %s", name, cutoff, users, secs)
    return users


def run_aggregate(cfg: Config, rd: RunDir) -> dict[str, object]:
    """validated/ -> features/ (sequences, item_stats, covisitation, exclusions per split;
    holdout and rank_labels)."""
    from recsys.spark import get_spark, size_shuffles

    t0 = time.time()
    run_date = rd.date
    spark = get_spark(cfg.spark, app_name=f"recsys-aggregate-{run_date}")
    catalog = spark.read.parquet(str(rd.require("validated", "catalog")))
    clean = spark.read.parquet(str(rd.require("validated", "events")))
    n_shuffle = size_shuffles(spark, cfg.spark, [str(rd.require("validated", "events"))])
    inter = _cache(by_user(interactions(clean, cfg.events.weights, cfg.events.min_rating_positive), n_shuffle))
    # Materialised before any split plans on it: a cache not yet computed does not
    # report its partitioning, and every window would shuffle the events again.
    n_events = inter.count()
    _write(catalog, str(rd.path("features", "catalog")), files=1)
    codes = item_codes(catalog).cache()
    counts: dict[str, object] = {"protocol": cfg.evaluate.protocol if cfg.evaluate.enabled else "none",
                                 "shuffle_partitions": n_shuffle, "events": n_events}  # fmt: skip
    window, every_pair = covis = covis_params(cfg.retrieve, n_events)
    counts["covisitation"] = {"window": window, "every_pair": every_pair}
    log.info("aggregate: %d events: co-visitation within %d steps, %s", n_events, window,
             "every pair both ways (small data)" if every_pair else "kept pairs both ways")  # fmt: skip
    splits, tables, labels = _splits(cfg, inter, run_date)
    counts["rank_labels_by"] = labels
    for name, table in tables.items():
        _write(table, str(rd.path("features", name)))
        counts[f"{name}_pairs"] = spark.read.parquet(str(rd.path("features", name))).count()
    for name, (ev, cutoff) in splits.items():
        if name == "train" and cfg.evaluate.protocol == "time":
            counts["split_date"] = cutoff.isoformat()
        if name == "rank":
            counts["rank_cutoff"] = cutoff.isoformat()
        counts[f"{name}_users"] = write_split(cfg, rd, name, ev, cutoff, catalog, codes, covis)
        # The date the split's history ends before (its trending / new-arrival windows).
        jsonio.write(rd.path("features", name, "split.json"), {"cutoff": cutoff.isoformat(), "rank_labels_by": labels})
        if ev is not inter:
            ev.unpersist()
    counts["splits"] = sorted(splits)
    counts["seconds"] = round(time.time() - t0, 1)
    log.info("aggregate: %s", counts)
    inter.unpersist()
    codes.unpersist()
    return counts
