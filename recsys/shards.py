"""User shards: which users a shard holds, where its part files live, how many there are.

A user's shard is a stable hash of the user id (pandas' SipHash with a fixed key: the
same on every machine, Python version and night), modulo the run's shard count. The
count is fixed once per run, by the first sharded stage, in `<run>/shards.json`; every
later stage and every worker reads it from there, so a retried shard or a shard on
another machine can never disagree about who is in it.

Part files. A run with one shard writes the contract files as before
(`candidates/by_source.parquet` is a file). A run with n > 1 shards writes each of them
as a directory of parts, `candidates/by_source.parquet/part-00003.parquet`, the layout
Spark, pyarrow, pandas and DuckDB all read as one table (`pd.read_parquet(path)`).
Numpy/pyarrow only: imported by the DAG's mapped tasks and by every shard worker.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.config import Config
from recsys.rundir import RunDir

PLAN_FILE = "shards.json"
# A shard no user falls in (read_table returns the schema and no row): item-side work.
NO_USERS = (-1, 2)


def shard_of(user_ids: Any, n_shards: int) -> np.ndarray:
    """[n] user ids -> [n] int64 shard in 0..n_shards-1 (stable across machines and runs)."""
    ids = np.asarray(user_ids, dtype=object)
    if n_shards <= 1:
        return np.zeros(len(ids), dtype=np.int64)
    h = pd.util.hash_array(ids, categorize=False)  # uint64, fixed hash key
    return (h % np.uint64(n_shards)).astype(np.int64)


def shard_count(cfg: Config, n_users: int) -> int:
    if cfg.scale.shards:
        return cfg.scale.shards
    return max(1, math.ceil(n_users / cfg.scale.users_per_shard))


def serving_users(rd: RunDir) -> int:
    """Users to serve tonight: the rows of features/full/sequences (parquet metadata only)."""
    seq = rd.require("features", "full", "sequences")
    return sum(pq.ParquetFile(f).metadata.num_rows for f in (sorted(seq.glob("*.parquet")) if seq.is_dir() else [seq]))


def plan(cfg: Config, rd: RunDir) -> list[int]:
    """The run's shard list: read from shards.json, else decided from the serving users'
    count (rows of features/full/sequences) and recorded."""
    path = rd.path(PLAN_FILE)
    if path.is_file():
        return list(range(json.loads(path.read_text())["shards"]))
    users = serving_users(rd)
    n = shard_count(cfg, users)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"shards": n, "users": users}))
    os.replace(tmp, path)
    return list(range(n))


def n_shards(rd: RunDir) -> int:
    path = rd.require(PLAN_FILE)
    return int(json.loads(path.read_text())["shards"])


def part_path(rd: RunDir, n: int, shard: int, *parts: str) -> Path:
    """Where shard writes the contract file rd.path(*parts): the file itself with one
    shard, else part-<shard>.parquet inside a directory of that name."""
    base = rd.path(*parts)
    if n <= 1:
        base.parent.mkdir(parents=True, exist_ok=True)
        return base
    base.mkdir(parents=True, exist_ok=True)
    return base / f"part-{shard:05d}.parquet"


def write_part(df: pd.DataFrame, path: Path) -> None:
    """Atomic: a retried or killed shard never leaves half a part file behind."""
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def read_part(rd: RunDir, n: int, shard: int, *parts: str, columns: list[str] | None = None) -> pd.DataFrame:
    return pq.read_table(existing_part(rd, n, shard, *parts), columns=columns).to_pandas()


def existing_part(rd: RunDir, n: int, shard: int, *parts: str) -> Path:
    path = rd.path(*parts)
    if n > 1:
        path = path / f"part-{shard:05d}.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run the earlier stage for shard {shard} first")
    return path


def part_files(path: Path) -> list[Path]:
    """The parquet files of a contract file: itself, or its parts in shard order."""
    if path.is_dir():
        return sorted(path.glob("part-*.parquet"))
    return [path]


def num_rows(path: Path) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in part_files(path))


def write_info(rd: RunDir, stage: str, shard: int, info: dict[str, Any]) -> None:
    d = rd.path("shards", stage)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{shard:05d}.json.tmp"
    tmp.write_text(json.dumps(info, default=str))
    os.replace(tmp, d / f"{shard:05d}.json")


def read_infos(rd: RunDir, stage: str, n: int) -> list[dict[str, Any]]:
    """Every shard's info for stage; a missing shard is an error naming it."""
    d = rd.path("shards", stage)
    missing = [i for i in range(n) if not (d / f"{i:05d}.json").is_file()]
    if missing:
        raise FileNotFoundError(f"{stage}: shards {missing[:10]} of {n} have not finished (no {d}/<shard>.json)")
    return [json.loads((d / f"{i:05d}.json").read_text()) for i in range(n)]


def workers(cfg: Config, n: int) -> int:
    return max(1, min(n, cfg.scale.workers or os.cpu_count() or 1))


def read_table(path: Path, shard: tuple[int, int] | None, key: str = "user_id",
               columns: list[str] | None = None, users: np.ndarray | None = None) -> pa.Table:  # fmt: skip
    """The rows of a parquet file (or directory) whose key falls in shard (i, n) and,
    when given, in users; None = every row. Streams record batches, so only the kept
    rows are ever held."""
    sharded = shard is not None and shard[1] > 1
    if not sharded and users is None:
        return pq.read_table(path, columns=columns)
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    # A hash lookup (Arrow's is_in): np.isin on object arrays of ids sorts them with
    # Python comparisons, and took over 200 s per 262k-row batch against 120k users
    # (the embed stage spent 10 of its 16 minutes there at 300k users).
    wanted = pa.array(np.asarray(users).astype(str)) if users is not None else None
    parts = []
    for f in files:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=262_144, columns=columns):
            keep = np.ones(batch.num_rows, dtype=bool)
            if sharded:
                assert shard is not None
                keep &= shard_of(batch.column(key).to_numpy(zero_copy_only=False), shard[1]) == shard[0]
            if wanted is not None:
                col = batch.column(key)
                keep &= pc.is_in(col, value_set=wanted.cast(col.type)).to_numpy(zero_copy_only=False)
            parts.append(batch.filter(pa.array(keep)))
    schema = pq.read_schema(files[0]) if files else None
    if columns and schema is not None:
        schema = pa.schema([schema.field(c) for c in columns])
    return pa.Table.from_batches(parts, schema=schema)


class PartReader:
    """A part file held as Arrow (compact strings), handed out as pandas one user batch
    at a time, so a stage's memory is bounded by the batch, not by the shard."""

    def __init__(self, path: Path, columns: list[str] | None = None) -> None:
        self.table = pq.read_table(path, columns=columns)
        self._where: dict[str, int] | None = None  # user -> index into the arrays below
        self._first = self._last = self._count = np.zeros(0, dtype=np.int64)  # [users] rows

    def rows(self, users: list[str]) -> pd.DataFrame:
        """The rows of users, in file order. The stages read a part in the batches of
        users it was written in (one row group each, or sorted by user), so a batch's
        rows are one contiguous range of the file, found from each user's first and
        last row and row count (indexed on the first call) and sliced without a copy.
        A filter per batch scanned the whole part every time: over a 48k-user part of
        16.8M rows in 24 batches, 5.0 s against 1.8 s (index included) in by_source's
        layout, 5.1 s against 2.5 s sorted by user. Any other layout is filtered."""
        if self._where is None:
            self._build_index()
        assert self._where is not None
        at = np.unique(np.fromiter((self._where[u] for u in users if u in self._where), dtype=np.int64))
        if not len(at):
            return self.table.slice(0, 0).to_pandas()
        lo, hi, n = self._first[at].min(), self._last[at].max() + 1, int(self._count[at].sum())
        if hi - lo == n:  # the users' n rows fill rows lo..hi: nobody else's row is in between
            return self.table.slice(int(lo), n).to_pandas()
        t = self.table
        return t.filter(
            pc.is_in(t.column("user_id"), value_set=pa.array(users, type=t.schema.field("user_id").type))
        ).to_pandas()

    def _build_index(self) -> None:
        enc = pc.dictionary_encode(self.table.column("user_id")).combine_chunks()
        codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)  # [rows]
        n_u, pos = len(enc.dictionary), np.arange(len(codes))
        self._count = np.bincount(codes, minlength=n_u)
        self._first = np.full(n_u, len(codes), dtype=np.int64)
        self._last = np.full(n_u, -1, dtype=np.int64)
        np.minimum.at(self._first, codes, pos)
        np.maximum.at(self._last, codes, pos)
        self._where = {u: i for i, u in enumerate(enc.dictionary.to_pylist())}


def batches(users: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(users), size):
        yield users[i : i + size]


class PartWriter:
    """Writes a part file batch by batch (one row group each), atomically at close: a
    killed shard leaves no half file. An empty part keeps the given empty frame's schema."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp")
        self.writer: pq.ParquetWriter | None = None
        self.rows = 0

    def write(self, df: pd.DataFrame) -> None:
        t = pa.Table.from_pandas(df, preserve_index=False)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.tmp, t.schema)
        elif t.schema != self.writer.schema:
            t = t.cast(self.writer.schema)
        self.writer.write_table(t)
        self.rows += len(df)

    def close(self, empty: pd.DataFrame) -> int:
        if self.writer is None:
            empty.to_parquet(self.tmp, index=False)
        else:
            self.writer.close()
        os.replace(self.tmp, self.path)
        return self.rows
