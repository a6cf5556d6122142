"""Progress for long work: a tqdm bar with rate and ETA on a terminal, and otherwise (an
Airflow task, a log file) one INFO line every `every_s` seconds with the same numbers.
RECSYS_PROGRESS=log forces log lines, =bar forces the bar."""

from __future__ import annotations

import logging
import os
import sys
import time
from types import TracebackType
from typing import Any, TextIO

log = logging.getLogger("recsys.progress")


def _use_bar(stream: TextIO) -> bool:
    mode = os.environ.get("RECSYS_PROGRESS")
    if mode in ("log", "bar"):
        return mode == "bar"
    return bool(getattr(stream, "isatty", lambda: False)())


class Progress:
    def __init__(self, total: int, desc: str, unit: str = "it", every_s: float = 30.0,
                 stream: TextIO | None = None, bar: bool | None = None) -> None:  # fmt: skip
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.done = 0
        self.t0 = self.t_log = time.time()
        self.postfix: dict[str, Any] = {}
        stream = stream or sys.stderr
        self.bar: Any = None
        if _use_bar(stream) if bar is None else bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True, mininterval=0.5)

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.done += n
        self.postfix.update(postfix)
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(self.postfix, refresh=False)
            self.bar.update(n)
            return
        now = time.time()
        if now - self.t_log >= self.every_s:
            self.t_log = now
            log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        """'<desc>: done/total unit (rate unit/s, ETA s) k=v' (the log form)."""
        elapsed = max((now or time.time()) - self.t0, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        extra = "".join(f" {k}={v:.4g}" if isinstance(v, float) else f" {k}={v}" for k, v in self.postfix.items())
        return f"{self.desc}: {self.done}/{self.total} {self.unit} ({rate:.1f} {self.unit}/s, ETA {eta:.0f}s){extra}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
