"""Issue 9: long work shows progress: a bar with rate and ETA on a terminal, a periodic
log line otherwise."""

import io
import logging

from recsys.progress import Progress


def test_log_lines_carry_count_rate_and_eta(caplog):
    caplog.set_level(logging.INFO, logger="recsys.progress")
    with Progress(10, "rerank", "users", every_s=0.0, bar=False) as p:
        p.update(4, loss=1.23456)
    assert len(caplog.records) == 1
    msg = caplog.records[0].getMessage()
    assert msg.startswith("rerank: 4/10 users (") and "users/s, ETA " in msg and msg.endswith("loss=1.235")


def test_quiet_between_intervals(caplog):
    caplog.set_level(logging.INFO, logger="recsys.progress")
    with Progress(10, "x", every_s=3600, bar=False) as p:
        for _ in range(10):
            p.update()
    assert caplog.records == []


def test_terminal_bar_shows_rate_and_eta():
    out = io.StringIO()
    with Progress(100, "train epoch 1", "windows", stream=out, bar=True) as p:
        for _ in range(100):
            p.update(1, loss=0.5)
    text = out.getvalue()
    assert "train epoch 1" in text and "100/100" in text and "windows/s" in text and "loss=0.5" in text
