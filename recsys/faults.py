"""Fault-injection points for tests that kill a real process at a known step.

`checkpoint(name)` does nothing unless RECSYS_PAUSE_AT equals name: then it creates the
file RECSYS_PAUSE_FILE and sleeps, so that a test can SIGKILL the process exactly there
(tests/publish/test_faults.py). Production never sets these variables.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def checkpoint(name: str) -> None:
    if os.environ.get("RECSYS_PAUSE_AT") != name:
        return
    Path(os.environ["RECSYS_PAUSE_FILE"]).write_text(str(os.getpid()))
    while True:  # until killed
        time.sleep(1)
