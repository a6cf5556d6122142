"""Issue 8, item 14: the docker deployment published PostgreSQL, the Spark master and
Airflow on all interfaces, with passwords written in the files, and its images ran as
root. No docker engine runs here, so these read the files the engine would read."""

from __future__ import annotations

import re
import subprocess

import yaml

from tests.conftest import ROOT

DOCKER = ROOT / "docker"


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def test_only_localhost_ports_and_no_spark_master_port():
    services = _compose()["services"]
    published = {name: s.get("ports", []) for name, s in services.items() if s.get("ports")}
    assert published, "the site's PostgreSQL and the Airflow UI are published"
    for name, ports in published.items():
        for p in ports:
            assert str(p).startswith("127.0.0.1:"), f"{name} publishes {p} on every interface"
    assert not any("7077" in str(p) for ports in published.values() for p in ports)


def test_no_secret_is_written_in_the_deployment_files():
    text = (DOCKER / "docker-compose.yml").read_text()
    # Every password and every credential inside a URL comes from the environment.
    for m in re.finditer(r"^\s*[A-Z_]*PASSWORD:\s*(\S+)", text, re.MULTILINE):
        assert m.group(1).startswith("${") and ":?" in m.group(1), m.group(0)
    for m in re.finditer(r"://[^:/@\s]+:([^@\s]+)@", text):
        assert m.group(1).startswith("${") and ":?" in m.group(1), m.group(0)
    init = (DOCKER / "initdb.sh").read_text()
    assert not re.search(r"PASSWORD\s+'", init, re.IGNORECASE), "a literal password in initdb.sh"
    assert subprocess.run(["bash", "-n", str(DOCKER / "initdb.sh")]).returncode == 0
    assert "NOCREATEROLE" in init and "GRANT homepage_reader TO site" in init


def test_images_run_as_an_unprivileged_user():
    for f in ("Dockerfile", "Dockerfile.gpu"):
        lines = [ln.strip() for ln in (DOCKER / f).read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        users = [i for i, ln in enumerate(lines) if ln.startswith("USER ")]
        assert users, f"{f} runs as root"
        last = users[-1]
        assert lines[last].split()[1] not in ("root", "0")
        assert not any(ln.startswith(("RUN ", "COPY ")) for ln in lines[last + 1 :]), f"{f}: work after USER"
