"""User shards (issue 7, item 2): a stable assignment, shard-bounded reads, and a sharded
night (process pool, and the DAG's per-shard tasks) equal to the unsharded one."""

import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys import shards
from recsys.config import load_config
from tests.conftest import RUN_DATE


def test_shard_of_is_fixed_balanced_and_total():
    # Fixed values: the assignment must never change between machines, versions, nights
    # (a shard retried elsewhere must hold the same users).
    assert shards.shard_of(["u000001", "u000002", "u000003", "alice", "bob"], 4).tolist() == [0, 2, 1, 0, 2]
    assert shards.shard_of(["alice", "bob"], 1).tolist() == [0, 0]
    ids = [f"user{i}" for i in range(100_000)]
    s = shards.shard_of(ids, 8)
    counts = np.bincount(s, minlength=8)
    assert counts.sum() == len(ids) and counts.min() > 0.95 * len(ids) / 8 and counts.max() < 1.05 * len(ids) / 8


def test_shard_count_from_config_or_users():
    cfg = load_config(overrides={"scale": {"users_per_shard": 1000}}, environ={})
    assert [shards.shard_count(cfg, n) for n in (1, 1000, 1001, 25_000)] == [1, 1, 2, 25]
    cfg = load_config(overrides={"scale": {"shards": 3}}, environ={})
    assert shards.shard_count(cfg, 10) == 3


def test_read_table_returns_exactly_the_shards_rows(tmp_path):
    users = [f"u{i}" for i in range(1000)]
    t = pa.table({"user_id": users, "x": list(range(1000))})
    d = tmp_path / "seq"
    d.mkdir()
    pq.write_table(t.slice(0, 600), d / "part-0.parquet", row_group_size=100)
    pq.write_table(t.slice(600), d / "part-1.parquet", row_group_size=100)
    seen = []
    for i in range(3):
        part = shards.read_table(d, (i, 3)).to_pandas()
        assert (shards.shard_of(part["user_id"], 3) == i).all()
        seen += part["user_id"].tolist()
    assert sorted(seen) == sorted(users)  # every row in exactly one shard
    assert shards.read_table(d, shards.NO_USERS).num_rows == 0
    assert shards.read_table(d, shards.NO_USERS).schema.names == ["user_id", "x"]
    # users=: exactly those rows (ids on both sides of the file boundary, one unknown),
    # also combined with a shard.
    want = np.array(["u5", "u599", "u600", "u999", "nobody"], dtype=object)
    assert sorted(shards.read_table(d, None, users=want).column("user_id").to_pylist()) == [
        "u5",
        "u599",
        "u600",
        "u999",
    ]
    in0 = shards.read_table(d, (0, 3), users=want).column("user_id").to_pylist()
    assert sorted(in0) == sorted(u for u in ["u5", "u599", "u600", "u999"] if shards.shard_of(np.array([u]), 3)[0] == 0)


def _copy_run(tiny_run, tmp_path, **scale):
    """The tiny run's directory under a new work root, with a scale config."""
    from recsys.rundir import RunDir

    cfg0, _ = tiny_run
    src = RunDir(cfg0, RUN_DATE).final
    shutil.copytree(src, tmp_path / "runs" / RUN_DATE.isoformat() / "main")
    over = cfg0.model_dump(mode="json")
    over["paths"]["work_root"] = str(tmp_path)
    over["scale"] = scale
    return load_config(overrides=over, environ={}), RunDir(cfg0, RUN_DATE)


def _sorted(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return df.sort_values(keys).reset_index(drop=True)


@pytest.mark.slow
def test_sharded_stages_equal_the_unsharded_night(tiny_run, tmp_path):
    from recsys.pipeline import run_stage
    from recsys.rundir import RunDir

    cfg, ref = _copy_run(tiny_run, tmp_path, shards=3, workers=2, batch_users=40)  # several batches per shard
    for stage in ("retrieve", "rank", "rerank"):
        run_stage(stage, cfg, RUN_DATE)
    rd = RunDir(cfg, RUN_DATE)
    parts = sorted(p.name for p in rd.path("candidates", "by_source.parquet").iterdir())
    assert parts == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    for i, p in enumerate(parts):  # each part holds only its shard's users
        users = pq.read_table(rd.path("candidates", "by_source.parquet", p)).column("user_id").to_pylist()
        assert users and (shards.shard_of(users, 3) == i).all()
    for parts_, keys in ((("candidates", "by_source.parquet"), ["user_id", "source", "source_rank"]),
                         (("candidates", "ranked.parquet"), ["user_id", "rank"]),
                         (("slates", "slates.parquet"), ["user_id"]),
                         (("slates", "slate_items.parquet"), ["user_id", "section", "position"])):  # fmt: skip
        got = _sorted(pd.read_parquet(rd.path(*parts_)), keys)
        want = _sorted(pd.read_parquet(ref.path(*parts_)), keys)
        pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-6)
    info = rd.stage_info("rerank")
    assert info["shards"] == 3 and info["users"] == len(pd.read_parquet(ref.path("slates", "slates.parquet")))
    # evaluate and publish read the parts (fingerprint, streamed load): every page published
    run_stage("evaluate", cfg, RUN_DATE)
    assert run_stage("publish", cfg, RUN_DATE)["users"] == info["users"]


@pytest.mark.slow
def test_dag_parts_one_task_per_shard_and_a_smaller_rerun(tiny_run, tmp_path):
    """The DAG's path: prepare returns the shard list, each shard is its own call (a
    retry re-runs one), finish records the stage; a re-run with fewer shards leaves no
    stale part behind."""
    from recsys.pipeline import run_stage_part
    from recsys.rundir import RunDir

    cfg, ref = _copy_run(tiny_run, tmp_path, shards=4, workers=1)
    assert run_stage_part("retrieve", "prepare", cfg, RUN_DATE) == [0, 1, 2, 3]
    for i in (0, 1, 2, 3, 2):  # shard 2 retried
        run_stage_part("retrieve", "shard", cfg, RUN_DATE, shard=i)
    info = run_stage_part("retrieve", "finish", cfg, RUN_DATE)
    rd = RunDir(cfg, RUN_DATE)
    assert info["shards"] == 4 and rd.stage_info("retrieve")["status"] == "ok"
    want = _sorted(pd.read_parquet(ref.path("candidates", "by_source.parquet")), ["user_id", "source", "source_rank"])
    got = _sorted(pd.read_parquet(rd.path("candidates", "by_source.parquet")), ["user_id", "source", "source_rank"])
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-6)
    with pytest.raises(ValueError, match="outside"):
        run_stage_part("retrieve", "shard", cfg, RUN_DATE, shard=4)

    cfg2 = cfg.model_copy(update={"scale": cfg.scale.model_copy(update={"shards": 2})})
    assert run_stage_part("retrieve", "prepare", cfg2, RUN_DATE) == [0, 1]
    assert not rd.path("candidates", "by_source.parquet").exists()  # the 4 old parts are gone
    with pytest.raises(FileNotFoundError, match=r"shards \[1\]"):
        run_stage_part("retrieve", "shard", cfg2, RUN_DATE, shard=0)
        run_stage_part("retrieve", "finish", cfg2, RUN_DATE)


def test_part_reader_rows_as_a_filter_would_return_them(tmp_path):
    """Sorted parts are sliced, anything else filtered: the same rows in file order."""
    import pyarrow.compute as pc

    from recsys.shards import PartReader

    def check(users_col, batches):
        path = tmp_path / f"p{len(list(tmp_path.iterdir()))}.parquet"
        t = pa.table({"user_id": users_col, "x": list(range(len(users_col)))})
        pq.write_table(t, path, row_group_size=3)  # several chunks
        reader = PartReader(path)
        for batch in batches:
            want = t.filter(pc.is_in(t.column("user_id"), value_set=pa.array(batch, pa.string()))).to_pandas()
            assert reader.rows(batch).equals(want), batch

    grouped = ["a", "a", "b", "c", "c", "c", "d", "e", "e"]
    check(grouped, [["a", "b"], ["c", "d", "e"], ["b", "d"], ["zz"], [], ["a", "a"], ["e", "a"]])
    # one row group per written batch, users interleaved inside it (by_source: source by source)
    check(["b", "a", "b", "a", "d", "c", "d", "c"], [["a", "b"], ["c", "d"], ["a", "c"], ["a"]])
    check(["b", "a", "b", "c", "a"], [["a", "b"], ["c"], ["a", "c"]])  # nothing contiguous: the filter
