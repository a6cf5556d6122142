"""The run directory <work_root>/runs/<date>/<run_id>/ and its manifest.json.

Stages communicate only through this directory (and the database), so any stage can be
re-run alone for a date. The manifest records, per stage, its counts, timings and
outputs; it is rewritten atomically (temp file + rename) after each stage.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

from recsys import jsonio
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


class RunDir:
    def __init__(self, cfg: Config, run_date: dt.date) -> None:
        self.cfg = cfg
        self.date = run_date
        self.run_id = cfg.resolved_run_id()
        self.root = Path(cfg.paths.work_root) / "runs" / run_date.isoformat() / self.run_id

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
                "run_dir": str(self.root.resolve()),
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
