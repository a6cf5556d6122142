"""One place that builds the SparkSession, so local runs, tests and a cluster agree."""

from __future__ import annotations

import logging
import math
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from recsys.config import SparkConfig

log = logging.getLogger(__name__)


def get_spark(cfg: SparkConfig, app_name: str = "recsys") -> SparkSession:
    # The workers must run the same interpreter as the driver (the venv's python),
    # otherwise Python UDF-free jobs still fail on version checks.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if cfg.master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.appName(app_name)
        .master(cfg.master)
        .config("spark.driver.memory", cfg.driver_memory)
        .config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
        # Adaptive execution merges small shuffle partitions (a small output is one file).
        .config("spark.sql.adaptive.enabled", "true")
        .config("spark.sql.adaptive.coalescePartitions.enabled", "true")
        # Every timestamp in the contract is UTC; never let the host's zone leak in.
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.sources.parallelPartitionDiscovery.parallelism", "8")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        # Parquet nanosecond timestamps (pandas' default) are unreadable as timestamps in
        # Spark; read them as longs and let validation parse them by magnitude.
        .config("spark.sql.legacy.parquet.nanosAsLong", "true")
    )
    if cfg.master.startswith("local"):
        builder = builder.config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
    for k, v in cfg.conf.items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def partitions_for(input_bytes: int, floor: int, mb_per_partition: int) -> int:
    """Shuffle partitions for a stage reading input_bytes: at least floor, one per
    mb_per_partition MiB of input (0 = floor)."""
    if mb_per_partition <= 0:
        return floor
    return max(floor, math.ceil(input_bytes / (mb_per_partition * 2**20)))


def size_shuffles(spark: SparkSession, cfg: SparkConfig, uris: list[str]) -> int:
    """Set spark.sql.shuffle.partitions from the size of the files under uris (through
    Hadoop's FileSystem: local, s3a://, hdfs:// alike); returns the count."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None, "a SparkContext without a JVM gateway"
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    total = 0
    for uri in uris:
        path = jvm.org.apache.hadoop.fs.Path(uri)
        total += int(path.getFileSystem(conf).getContentSummary(path).getLength())
    n = partitions_for(total, cfg.shuffle_partitions, cfg.input_mb_per_partition)
    spark.conf.set("spark.sql.shuffle.partitions", str(n))
    log.info("spark: %d shuffle partitions for %.1f MiB of input", n, total / 2**20)
    return n
