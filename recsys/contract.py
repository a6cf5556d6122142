"""The input contract: where partitions live, how raw files are read, what a row must hold.

Readers return *raw* DataFrames whose contract columns are all strings, plus
`_corrupt` (the raw text of a line the parser could not read, else null), `dt` (the
partition date) and `source_file`. Typing and validation happen in
`recsys.aggregate.validate_events` / `validate_catalog`, which route every bad row to
quarantine with a reason instead of dropping it.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

EVENT_COLUMNS = ["user_id", "item_id", "event_type", "ts", "session_id", "value"]
EVENT_REQUIRED = ["user_id", "item_id", "event_type", "ts"]
CATALOG_COLUMNS = [
    "item_id", "title", "category", "brand", "description", "price", "available", "created_at",
]  # fmt: skip
CATALOG_REQUIRED = ["item_id", "title"]
FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}
_DT_RE = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})$")


log = logging.getLogger(__name__)


class InputError(RuntimeError):
    """A required input partition is missing or unreadable; the message says which."""


@dataclass(frozen=True)
class Partition:
    date: dt.date
    path: str  # directory URI
    files: tuple[tuple[str, str], ...]  # (file URI, spark format)


def _hadoop_fs(spark: SparkSession, root: str):  # type: ignore[no-untyped-def]
    jvm = spark.sparkContext._jvm
    assert jvm is not None, "a SparkContext without a JVM gateway"
    path = jvm.org.apache.hadoop.fs.Path(root)
    return path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), path


def list_partitions(spark: SparkSession, root: str) -> list[Partition]:
    """Every `dt=YYYY-MM-DD` directory under root with its readable files, by date.

    Uses the Hadoop FileSystem API so local paths, s3a:// and hdfs:// behave the same.
    Files whose extension is not a known format (e.g. _SUCCESS, .crc) are ignored.
    """
    fs, path = _hadoop_fs(spark, root)
    if not fs.exists(path):
        return []
    out: list[Partition] = []
    for st in fs.listStatus(path):
        if not st.isDirectory():
            continue
        m = _DT_RE.match(st.getPath().getName())
        if not m:
            continue
        try:
            date = dt.date.fromisoformat(m.group(1))
        except ValueError:
            continue
        files = []
        for f in fs.listStatus(st.getPath()):
            name = f.getPath().getName()
            if f.isFile() and not name.startswith(("_", ".")):
                for ext, fmt in FORMATS.items():
                    if name.endswith(ext):
                        files.append((f.getPath().toString(), fmt))
        out.append(Partition(date, st.getPath().toString(), tuple(sorted(files))))
    return sorted(out, key=lambda p: p.date)


def event_window(run_date: dt.date, lookback_days: int) -> tuple[dt.date, dt.date]:
    """[first, last] partition dates a run for run_date reads: dt < D within lookback."""
    return run_date - dt.timedelta(days=lookback_days), run_date - dt.timedelta(days=1)


def select_event_partitions(parts: list[Partition], run_date: dt.date, lookback_days: int) -> list[Partition]:
    first, last = event_window(run_date, lookback_days)
    chosen = [p for p in parts if first <= p.date <= last]
    if not chosen:
        have = f"{parts[0].date}..{parts[-1].date}" if parts else "none"
        raise InputError(
            f"no event partitions in the window {first}..{last} for run date {run_date} "
            f"(partitions present: {have}); check paths.data_root and events.lookback_days"
        )
    # The day before the run date is the one a nightly run exists for: missing means
    # the upstream export did not land, and a homepage from stale data is worse than
    # keeping yesterday's.
    if chosen[-1].date != last:
        raise InputError(
            f"required event partition dt={last} is missing (newest present: "
            f"dt={chosen[-1].date}); the upstream export for that day has not landed"
        )
    return chosen


def select_catalog_partition(parts: list[Partition], run_date: dt.date, max_age_days: int | None = None) -> Partition:
    chosen = [p for p in parts if p.date <= run_date]
    if not chosen:
        raise InputError(f"no catalog partition with dt <= {run_date}")
    newest = chosen[-1]
    if max_age_days is not None and (run_date - newest.date).days > max_age_days:
        raise InputError(
            f"the newest catalog snapshot is dt={newest.date}, {(run_date - newest.date).days} days before "
            f"{run_date} (events.catalog_max_age_days={max_age_days}); the catalog export has not landed"
        )
    return newest


def _csv_header(spark: SparkSession, uri: str) -> list[str] | None:
    """The header line of a CSV file (None for an empty file), read through the Hadoop
    FileSystem so s3a:// and hdfs:// work; invalid UTF-8 becomes U+FFFD."""
    import csv

    fs, path = _hadoop_fs(spark, uri)
    jvm = spark.sparkContext._jvm
    assert jvm is not None, "a SparkContext without a JVM gateway"
    stream = fs.open(path)
    try:
        line = jvm.java.io.BufferedReader(jvm.java.io.InputStreamReader(stream, "UTF-8")).readLine()
    finally:
        stream.close()
    if line is None or not line.strip():
        return None
    return [c.strip().lstrip("\ufeff") for c in next(csv.reader([line]))]


def _read_csv(spark: SparkSession, files: list[str]) -> list[DataFrame]:
    """CSV files bound by header name, not position (issue 8, item 10): files are
    grouped by header and each group read with its own all-string schema, so reordered
    or absent optional columns land in the right field."""
    from pyspark.sql import types as T

    groups: dict[tuple[str, ...], list[str]] = {}
    for f in files:
        names = _csv_header(spark, f)
        if names is not None:  # an empty file holds no row
            groups.setdefault(tuple(names), []).append(f)
    frames = []
    for header, group in groups.items():
        schema = T.StructType(
            [T.StructField(c, T.StringType()) for c in header] + [T.StructField("_corrupt", T.StringType())]
        )
        frames.append(
            spark.read.schema(schema)
            .option("header", "true")
            .option("enforceSchema", "true")  # our schema is the header itself
            .option("mode", "PERMISSIVE")
            .option("columnNameOfCorruptRecord", "_corrupt")
            .csv(group)
        )
    return frames


def _read_parquet(spark: SparkSession, files: list[str]) -> list[DataFrame]:
    """One read when the files' schemas merge; else file by file (a column that is a
    timestamp in one file and text in another must not fail the night: every contract
    column is cast to text afterwards anyway)."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    try:
        df = spark.read.option("mergeSchema", "true").parquet(*files)
        df.schema  # noqa: B018 - forces the footer merge here
        return [df]
    except (PySparkException, Py4JJavaError) as e:
        log.warning("parquet schemas conflict (%s); reading %d files one by one", str(e).splitlines()[0], len(files))
        return [spark.read.parquet(f) for f in files]


def read_raw(spark: SparkSession, parts: list[Partition], columns: list[str]) -> DataFrame:
    """Union of every file of `parts`, contract columns as strings (missing ones null)."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    by_fmt: dict[str, list[str]] = {}
    for p in parts:
        for f, fmt in p.files:
            by_fmt.setdefault(fmt, []).append(f)
    if not by_fmt:
        raise InputError(f"the selected partitions hold no readable files: {[p.path for p in parts]}")
    text_schema = T.StructType(
        [T.StructField(c, T.StringType()) for c in columns] + [T.StructField("_corrupt", T.StringType())]
    )
    raw_frames: list[DataFrame] = []
    for fmt, files in sorted(by_fmt.items()):
        if fmt == "parquet":
            raw_frames += [df.withColumn("_corrupt", F.lit(None).cast("string")) for df in _read_parquet(spark, files)]
        elif fmt == "json":
            raw_frames.append(
                spark.read.schema(text_schema)
                .option("mode", "PERMISSIVE")
                .option("columnNameOfCorruptRecord", "_corrupt")
                .json(files)
            )
        else:
            raw_frames += _read_csv(spark, files)
    if not raw_frames:
        return spark.createDataFrame([], T.StructType([*text_schema.fields, *(
            T.StructField(c, T.StringType()) for c in ("dt", "source_file"))]))  # fmt: skip
    frames = []
    for df in raw_frames:
        # Timestamps are rendered in the session zone (UTC) and parsed back in
        # validation, so parquet, JSON and CSV take one parsing path.
        cols = [(F.col(c) if c in df.columns else F.lit(None)).cast("string").alias(c) for c in columns]
        frames.append(
            df.select(
                *cols,
                F.col("_corrupt"),
                F.regexp_extract(F.col("_metadata.file_path"), r"dt=(\d{4}-\d{2}-\d{2})", 1).alias("dt"),
                F.col("_metadata.file_path").alias("source_file"),
            )
        )
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame)
    return out
