"""Issue 8, items 8 and 15: one writer per run directory, a re-run built beside the last
good run and swapped in only when it succeeded, and a gate result tied to the slates it
judged."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from recsys.contract import InputError
from recsys.pipeline import run_stage
from recsys.rundir import RunDir, RunLockedError
from tests.conftest import ROOT, RUN_DATE
from tests.test_bad_inputs import D, Y, _cfg, _write_inputs


def test_failed_rerun_keeps_the_last_good_run(tmp_path, spark):
    """Item 15: re-running a date deleted the last good run before its input was checked."""
    data = tmp_path / "in"
    _write_inputs(data)
    cfg = _cfg(data, tmp_path / "work")
    run_stage("validate", cfg, D)
    rd = RunDir(cfg, D)
    assert rd.root == rd.final
    (rd.final / "metrics.json").write_text('{"from": "the good run"}')
    day = data / "events" / f"dt={Y}"
    saved = tmp_path / "saved"
    shutil.move(day, saved)
    day.mkdir()
    (day / "_SUCCESS").write_text("")
    with pytest.raises(InputError):
        run_stage("validate", cfg, D)
    assert (rd.final / "metrics.json").read_text() == '{"from": "the good run"}'
    assert (rd.final / "validated" / "events").is_dir()
    shutil.rmtree(day)
    shutil.move(saved, day)
    run_stage("validate", cfg, D)  # the re-run succeeds, beside the old run
    rd = RunDir(cfg, D)
    assert rd.root == rd.staging and (rd.final / "metrics.json").exists()
    rd.promote()
    assert not rd.staging.exists() and not (rd.final / "metrics.json").exists()
    assert (rd.final / "validated" / "events").is_dir() and RunDir(cfg, D).root == rd.final


def test_a_second_writer_is_refused(tmp_path):
    """Item 8: two runs of one date shared a run directory; validate deleted the other's."""
    cfg = _cfg(tmp_path / "in", tmp_path / "work")
    rd = RunDir(cfg, D)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time, datetime as dt\nfrom tests.test_bad_inputs import _cfg\n"
         "from recsys.rundir import RunDir\n"
         f"with RunDir(_cfg({str(tmp_path / 'in')!r}, {str(tmp_path / 'work')!r}), dt.date({D.year}, {D.month}, "
         f"{D.day})).lock():\n    print('locked', flush=True)\n    time.sleep(60)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.time()
        with pytest.raises(RunLockedError, match="another process"):
            run_stage("validate", cfg, D)
        assert time.time() - t0 < 30  # refused, not queued
        assert not rd.final.exists()
    finally:
        holder.kill()
        holder.wait()
    with rd.lock(), rd.lock():  # free again, and re-entrant within one process
        pass


def test_publish_refuses_slates_changed_after_evaluate(tiny_run, tmp_path):
    """Item 8: publish trusted whatever metrics.json was there, so slates rebuilt after
    evaluate were published under an old gate result."""
    from recsys.config import load_config
    from recsys.publish.db import PublishError
    from recsys.publish.publish import run_publish

    cfg, _ = tiny_run
    src = RunDir(cfg, RUN_DATE)
    over = cfg.to_dict(redact=False)
    over["paths"]["work_root"] = str(tmp_path / "work")
    cfg2 = load_config(overrides=over, environ={})
    rd = RunDir(cfg2, RUN_DATE)
    shutil.copytree(src.final, rd.final)
    # The gate passed on these slates (other tests re-evaluate the shared run).
    metrics = json.loads(rd.path("metrics.json").read_text())
    metrics.update(gate={"passed": True}, slates_sha256=rd.slates_fingerprint())
    rd.path("metrics.json").write_text(json.dumps(metrics))
    fb = rd.path("slates", "fallback.parquet")
    table = pq.read_table(fb)
    pq.write_table(table.slice(0, table.num_rows - 1), fb)  # "rebuilt" after evaluate
    with pytest.raises(PublishError, match="changed after evaluate"):
        run_publish(cfg2, rd)
    shutil.copy(src.path("slates", "fallback.parquet"), fb)
    assert run_publish(cfg2, rd)["switched"]


def test_open_a_finished_run_from_its_directory(tiny_run):
    from recsys.rundir import RunDir
    from tests.conftest import RUN_DATE

    cfg, _ = tiny_run
    rd = RunDir(cfg, RUN_DATE)
    opened = RunDir.open(rd.final)
    assert (opened.final, opened.date) == (rd.final, RUN_DATE)
    # the config of the manifest's latest writer (later tests re-run stages here with
    # other settings), with the fingerprint recorded beside it
    assert opened.cfg.fingerprint() == opened.read_manifest()["config_fingerprint"]
