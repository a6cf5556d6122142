"""spark.master from config against a real standalone cluster (issue 7, item 4): a
master and one worker started from the installed pyspark, the spark-submit entry point
jobs/aggregate.py run against them, the same validated rows as the local run."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, RUN_DATE

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def standalone(tmp_path):
    import pyspark

    home = Path(pyspark.__file__).parent
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_WORKER_DIR": str(tmp_path)}
    port = _free_port()
    url = f"spark://127.0.0.1:{port}"
    cls = str(home / "bin" / "spark-class")
    logs = [open(tmp_path / f"{n}.log", "w") for n in ("master", "worker")]  # noqa: SIM115 - closed below
    master = subprocess.Popen([cls, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port",
                               str(port), "--webui-port", str(_free_port())], env=env, stdout=logs[0],
                              stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.time() + 60
    while (
        "Starting Spark master" not in (tmp_path / "master.log").read_text()
        or "sparkMaster" not in (tmp_path / "master.log").read_text()
    ):
        assert time.time() < deadline and master.poll() is None, (tmp_path / "master.log").read_text()[-2000:]
        time.sleep(0.5)
    worker = subprocess.Popen([cls, "org.apache.spark.deploy.worker.Worker", url, "--cores", "1", "--memory", "1g",
                               "--webui-port", str(_free_port())], env=env, stdout=logs[1],
                              stderr=subprocess.STDOUT)  # fmt: skip
    while "Registering worker" not in (tmp_path / "master.log").read_text():
        assert time.time() < deadline and worker.poll() is None, (tmp_path / "worker.log").read_text()[-2000:]
        time.sleep(0.5)
    yield url, tmp_path / "master.log"
    for p in (worker, master):
        p.terminate()
        p.wait(30)
    for f in logs:
        f.close()


def test_validate_on_a_standalone_cluster_equals_local(tiny_run, tiny_data, tmp_path, standalone):
    url, master_log = standalone
    _cfg, results = tiny_run
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
           "SPARK_LOCAL_IP": "127.0.0.1", "PYTHONPATH": str(ROOT)}  # fmt: skip
    work = tmp_path / "work"
    sets = [f"paths.data_root={tiny_data}", f"paths.work_root={work}", f"spark.master={url}",
            "spark.driver_memory=1g", "spark.shuffle_partitions=2", "events.bot_max_events_per_day=200"]  # fmt: skip
    out = subprocess.run([sys.executable, str(ROOT / "jobs" / "aggregate.py"), "--date", RUN_DATE.isoformat(),
                          "--stage", "validate", *(x for s in sets for x in ("--set", s))],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    info = json.loads((work / "runs" / str(RUN_DATE) / "main" / "manifest.json").read_text())["stages"]["validate"]
    assert info["events_clean"] == results["validate"]["events_clean"]
    assert info["events_quarantined"] == results["validate"]["events_quarantined"]
    assert "Launching executor" in master_log.read_text()  # the work ran on the cluster's worker
