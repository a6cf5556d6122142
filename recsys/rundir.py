"""The run directory <work_root>/runs/<date>/<run_id>/ and its manifest.json.

Stages communicate only through this directory (and the database), so any stage can be
re-run alone for a date. The manifest records, per stage, its counts, timings and
outputs; it is rewritten atomically (temp file + rename) after each stage.

Re-running a date from validate never touches the last complete run until the new one
has succeeded (issue 8, item 15): the new run is built beside it in
runs/<date>/.<run_id>.next/ (every stage uses that directory while it exists) and
`promote` swaps it in after the last stage. A failed re-run leaves the old run (metrics,
report, slates) in place and the attempt in .next/ for inspection. One process at a time
writes a run: `lock` takes runs/<date>/.<run_id>.lock (item 8).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from recsys import jsonio, storage
from recsys.config import Config


def _git(*args: str) -> str:
    here = Path(__file__).resolve().parent.parent
    out = subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=5, check=False)
    return out.stdout.strip()


def code_version() -> str:
    """Short commit of the code that ran, '-dirty' when tracked files were modified."""
    try:
        rev = _git("rev-parse", "--short=12", "HEAD")
        if rev:
            return rev + ("-dirty" if _git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


log = logging.getLogger(__name__)


class RunLockedError(RuntimeError):
    """Another process is writing this run directory."""


# Locks held by this process: path -> (open lock file, depth). flock is per open file, so
# a second flock from the same process would deadlock on itself; nesting is counted here.
_HELD: dict[str, tuple[TextIO, int]] = {}


class RunDir:
    def __init__(self, cfg: Config, run_date: dt.date) -> None:
        self.cfg = cfg
        self.date = run_date
        self.run_id = cfg.resolved_run_id()
        self.parent = cfg.local_work_root() / "runs" / run_date.isoformat()
        self.final = self.parent / self.run_id
        self.staging = self.parent / f".{self.run_id}.next"
        self.root = self.staging if self.staging.exists() else self.final
        # A URL work root (recsys/storage.py): the run's home, mirrored in self.final.
        self.remote = (
            f"{cfg.paths.work_root.rstrip('/')}/runs/{run_date.isoformat()}/{self.run_id}"
            if storage.is_remote(cfg.paths.work_root)
            else None
        )

    @classmethod
    def open(cls, run_dir: str | Path) -> RunDir:
        """A finished run's directory (runs/<date>/<id>) with the config it ran with
        (from its manifest; secrets were never saved there)."""
        manifest = json.loads((Path(run_dir) / "manifest.json").read_text())
        return cls(Config.model_validate(manifest["config"]), dt.date.fromisoformat(manifest["logical_date"]))

    def sync_in(self) -> None:
        """Before a stage: the run's files from a URL work root (no-op for local roots)."""
        if self.remote:
            storage.pull(self.remote, self.final)

    def sync_out(self) -> None:
        """After a stage (failed ones too: their manifest entry): what it wrote, to the
        URL work root."""
        if self.remote and self.final.is_dir():
            storage.push(self.final, self.remote)

    @contextlib.contextmanager
    def lock(self, shared: bool = False) -> Iterator[None]:
        """Exclusive, non-blocking: a second writer fails at once with a clear error
        instead of deleting or mixing the first one's files. shared: the shard tasks of
        one stage, which write disjoint files, hold it together (and exclude a whole-run
        writer)."""
        path = str(self.parent / f".{self.run_id}.lock")
        if path in _HELD:
            f, depth = _HELD[path]
            _HELD[path] = (f, depth + 1)
        else:
            self.parent.mkdir(parents=True, exist_ok=True)
            f = open(path, "a+")  # noqa: SIM115 - held across the with block
            try:
                fcntl.flock(f, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "unknown"
                f.close()
                raise RunLockedError(
                    f"run {self.date}/{self.run_id} is being written by another process ({holder}); "
                    f"wait for it or stop it (lock file {path})"
                ) from None
            if not shared:
                f.seek(0)
                f.truncate()
                f.write(f"pid {os.getpid()} on {platform.node()}")
                f.flush()
            _HELD[path] = (f, 1)
        try:
            yield
        finally:
            f, depth = _HELD[path]
            if depth > 1:
                _HELD[path] = (f, depth - 1)
            else:
                del _HELD[path]
                f.close()  # releases the flock

    def begin_fresh(self) -> None:
        """A run from the first stage: a new, empty directory. Beside the last complete
        run when there is one (it is replaced only by `promote`), else in place. On a URL
        work root the remote run is cleared and rebuilt in place (object stores have no
        atomic directory rename)."""
        if self.remote:
            storage.remove(self.remote)
            shutil.rmtree(self.final, ignore_errors=True)
            self.root = self.final
            self.root.mkdir(parents=True)
            return
        if self.staging.exists():
            shutil.rmtree(self.staging)  # an earlier failed re-run
        if self.final.exists():
            self.root = self.staging
            log.info("run %s/%s exists: building the re-run beside it in %s", self.date, self.run_id, self.staging)
        else:
            self.root = self.final
        self.root.mkdir(parents=True)

    def promote(self) -> None:
        """The re-run succeeded: it replaces the previous run directory."""
        if self.root != self.staging:
            return
        old = self.parent / f".{self.run_id}.old"
        if old.exists():
            shutil.rmtree(old)
        self.final.rename(old)
        self.staging.rename(self.final)
        self.root = self.final
        shutil.rmtree(old)
        m = self.read_manifest()
        m["run_dir"] = str(self.final.resolve())
        self.write_manifest(m)
        log.info("run %s/%s: the re-run replaced the previous run directory", self.date, self.run_id)

    def slates_fingerprint(self) -> str:
        """sha256 over the published files (slates, fallback pages): evaluate records it
        with its gate result, publish refuses slates that changed since (item 8)."""
        h = hashlib.sha256()
        for name in ("slates.parquet", "fallback.parquet"):
            path = self.require("slates", name)
            for part in sorted(path.glob("part-*.parquet")) if path.is_dir() else [path]:
                h.update(part.name.encode())
                with open(part, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
        return h.hexdigest()

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def read_manifest(self) -> dict[str, Any]:
        if self.manifest_path.is_file():
            return json.loads(self.manifest_path.read_text())
        return {}

    def init_manifest(self) -> dict[str, Any]:
        self.root.mkdir(parents=True, exist_ok=True)
        m = self.read_manifest()
        m.update(
            {
                "logical_date": self.date.isoformat(),
                "run_id": self.run_id,
                "run_dir": str(self.final.resolve()),
                "config": self.cfg.to_dict(),
                "config_fingerprint": self.cfg.fingerprint(),
                "code_version": code_version(),
                "python": platform.python_version(),
                "seed": self.cfg.train.seed,
            }
        )
        m.setdefault("stages", {})
        self.write_manifest(m)
        return m

    def write_manifest(self, m: dict[str, Any]) -> None:
        jsonio.write(self.manifest_path, m)

    def record_stage(self, stage: str, info: dict[str, Any]) -> dict[str, Any]:
        m = self.read_manifest() or self.init_manifest()
        m.setdefault("stages", {})[stage] = info
        self.write_manifest(m)
        return m

    def stage_info(self, stage: str) -> dict[str, Any]:
        return self.read_manifest().get("stages", {}).get(stage, {})

    def require(self, *parts: str) -> Path:
        p = self.path(*parts)
        if not p.exists():
            raise FileNotFoundError(
                f"{p} does not exist: run the earlier stages for {self.date} first "
                f"(python -m recsys run --date {self.date}, or the missing stage alone)"
            )
        return p
