"""Issue 5: the README's PostgreSQL example, run exactly as written (two nights through
`python -m recsys run` with a bare postgresql:// URL), then read as the site would: a
login role holding homepage_reader calls homepage.get_homepage.

Only names are substituted: the database, the folders and the site's role get unique
names so the test owns (and drops) everything it creates.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import uuid

import psycopg2
import pytest

from tests.conftest import ROOT
from tests.publish.test_db import _pg_available

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

START, END = "<!-- postgres-example:start -->", "<!-- postgres-example:end -->"


def readme_example() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text[text.index(START) + len(START) : text.index(END)]
    body = block.split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in body.strip().splitlines() if line.strip()]


def test_readme_example_publishes_two_nights_to_postgres(tmp_path):
    if not _pg_available():
        pytest.skip("PostgreSQL on 127.0.0.1:5432 is not reachable")
    lines = readme_example()
    assert any("--database-url postgresql://" in line for line in lines), "the README must show the bare URL form"
    tag = uuid.uuid4().hex[:8]
    db_name, site = f"recsys_e2e_{tag}", f"site_{tag}"
    subs = [
        (r"\bshop\b", db_name),
        (r"\bsite\b", site),
        (r"data/pg-demo", str(tmp_path / "data")),
        (r"work/pg-demo", str(tmp_path / "work")),
        (r"^\.venv/bin/python ", shlex.quote(sys.executable) + " "),
    ]
    outputs = []
    try:
        for line in lines:
            cmd = line
            for pat, rep in subs:
                cmd = re.sub(pat, rep, cmd)
            res = subprocess.run(cmd, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=900)
            assert res.returncode == 0, f"{line}\n--- stdout\n{res.stdout[-3000:]}\n--- stderr\n{res.stderr[-6000:]}"
            outputs.append(res.stdout)
        # The last line is the site's read through psql; the page is the second night's.
        assert "2026-11-23/main/v1" in outputs[-1] and '"kind": "personal"' in outputs[-1]

        # The same read through the driver, as the site's login role.
        conn = psycopg2.connect(host="127.0.0.1", port=5432, user=site, dbname=db_name)
        try:
            cur = conn.cursor()
            cur.execute("SELECT homepage.get_homepage(%s)", ("u0000001",))
            page = cur.fetchone()[0]
            assert page["kind"] == "personal" and page["run_key"] == "2026-11-23/main/v1"
            assert page["sections"][0]["key"] == "top_picks" and page["sections"][0]["items"]
            cur.execute("SELECT homepage.get_homepage(%s)", ("nobody",))
            assert cur.fetchone()[0]["kind"] == "segment"
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute("SELECT count(*) FROM homepage.runs")
        finally:
            conn.close()

        # Both nights are recorded; the manifests (which hold the training history and
        # its undefined epoch-0 loss) were stored as strict JSON.
        admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname=db_name)
        try:
            cur = admin.cursor()
            cur.execute("SELECT run_key, status, manifest, metrics FROM homepage.runs ORDER BY run_key")
            rows = cur.fetchall()
        finally:
            admin.close()
        assert [(r[0], r[1]) for r in rows] == [
            ("2026-11-22/main/v1", "superseded"),
            ("2026-11-23/main/v1", "published"),
        ]
        history = rows[1][2]["stages"]["train"]["history"]
        assert history[0]["loss"] is None
        assert "NaN" not in json.dumps(rows[1][2]) and "Infinity" not in json.dumps(rows[1][2])
    finally:
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-q", "-c",
                        f"DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"], capture_output=True)  # fmt: skip
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-q", "-c",
                        f"DROP ROLE IF EXISTS {site}"], capture_output=True)  # fmt: skip
