"""A work root on a non-local filesystem (issue 7, item 3): fsspec's in-memory
filesystem stands in for s3a:// or gs://; each "machine" is its own local mirror."""

import uuid

import pandas as pd
import pytest

from recsys import storage
from tests.conftest import RUN_DATE


@pytest.fixture()
def mem_url():
    url = f"memory://recsys-test-{uuid.uuid4().hex[:8]}"
    yield url
    storage.remove(url)


def test_push_pull_round_trip_and_scoped_deletes(tmp_path, mem_url):
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "x").mkdir(parents=True)
    (a / "x" / "one.txt").write_text("1")
    (a / "two.txt").write_text("22")
    assert storage.push(a, mem_url) == (2, 0)
    assert storage.push(a, mem_url) == (0, 0)  # nothing changed
    assert storage.pull(mem_url, b) == 2
    assert (b / "x" / "one.txt").read_text() == "1" and (b / "two.txt").read_text() == "22"
    # machine b writes a file; machine a deletes one it had synced
    (b / "three.txt").write_text("333")
    storage.push(b, mem_url)
    (a / "two.txt").unlink()
    assert storage.push(a, mem_url) == (0, 1)  # deletes two.txt, never three.txt (a never saw it)
    fs, root = storage.filesystem(mem_url)
    assert sorted(p[len(root) + 1 :] for p in fs.find(root)) == ["three.txt", "x/one.txt"]
    assert storage.list_matching(mem_url, "*.txt") == ["three.txt"]


def test_stages_on_different_machines_share_a_url_work_root(tiny_run, tmp_path, mem_url):
    """The tiny run's inputs are uploaded; retrieve's shards run on two machines (two
    mirrors), its finish and rank on a third: each finds the others' outputs through
    the URL work root, and the result equals the local run's."""
    from recsys.config import load_config
    from recsys.pipeline import run_stage, run_stage_part
    from recsys.rundir import RunDir

    cfg0, _ = tiny_run
    ref = RunDir(cfg0, RUN_DATE)
    remote = f"{mem_url}/runs/{RUN_DATE}/main"
    for p in ref.final.rglob("*"):  # the earlier stages' outputs, as if written remotely
        if p.is_file() and p.relative_to(ref.final).parts[0] not in ("candidates", "slates", "shards"):
            fs, root = storage.filesystem(remote)
            fs.put_file(str(p), f"{root}/{p.relative_to(ref.final).as_posix()}")

    def machine(name: str):
        over = cfg0.model_dump(mode="json")
        over["paths"].update(work_root=mem_url, local_dir=str(tmp_path / name))
        over["scale"] = {"shards": 2, "workers": 1}
        return load_config(overrides=over, environ={})

    assert run_stage_part("retrieve", "prepare", machine("m1"), RUN_DATE) == [0, 1]
    run_stage_part("retrieve", "shard", machine("m2"), RUN_DATE, shard=0)
    run_stage_part("retrieve", "shard", machine("m3"), RUN_DATE, shard=1)
    info = run_stage_part("retrieve", "finish", machine("m1"), RUN_DATE)
    assert info["shards"] == 2 and not (tmp_path / "m2" / "runs" / str(RUN_DATE) / "main" / "candidates" /
                                        "by_source.parquet" / "part-00001.parquet").exists()  # fmt: skip
    run_stage("rank", machine("m4"), RUN_DATE)  # a fresh machine: pulls everything it reads
    local = RunDir(machine("m4"), RUN_DATE)
    assert local.root == tmp_path / "m4" / "runs" / str(RUN_DATE) / "main"
    for parts, keys in ((("candidates", "by_source.parquet"), ["user_id", "source", "source_rank"]),
                        (("candidates", "ranked.parquet"), ["user_id", "rank"])):  # fmt: skip
        got = pd.read_parquet(local.path(*parts)).sort_values(keys).reset_index(drop=True)
        want = pd.read_parquet(ref.path(*parts)).sort_values(keys).reset_index(drop=True)
        pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-6)
    fs, root = storage.filesystem(remote)
    assert fs.exists(f"{root}/candidates/ranked.parquet/part-00001.parquet")
    assert RunDir(machine("m1"), RUN_DATE).stage_info("retrieve")["status"] == "ok"
