"""Issue 9: the preview app in a real browser (Debian's Chromium driven by Playwright)
against homepages published by the test suite: search a user, read the sections and
catalog titles, switch versions, see what changed, browse segment pages. Screenshots
go to the test's tmp dir. Catalog text is escaped (a title holding markup shows as text)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import RUN_DATE

EVIL = "<script>window.__pwned=1</script><b>bold</b> & co"


def _chromium() -> str | None:
    for c in (os.environ.get("RECSYS_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser")):
        if c and os.path.exists(c):
            return c
    return None


@pytest.fixture()
def published(tiny_run, tmp_path):
    """A copy of the tiny run published twice to its own SQLite file: v1 as built, v2
    with one user's top pick removed (so the two versions differ for that user)."""
    from recsys.config import load_config
    from recsys.publish import db
    from recsys.rundir import RunDir

    cfg0, _ = tiny_run
    over = cfg0.to_dict(redact=False)
    over["paths"]["work_root"] = str(tmp_path / "work")
    over["publish"]["database_url"] = f"sqlite:///{tmp_path / 'preview.sqlite'}"
    cfg = load_config(overrides=over, environ={})
    rd = RunDir(cfg, RUN_DATE)
    shutil.copytree(RunDir(cfg0, RUN_DATE).final, rd.final)
    slates = pq.read_table(rd.path("slates", "slates.parquet")).to_pylist()
    fallback = pq.read_table(rd.path("slates", "fallback.parquet")).to_pylist()
    user = next(r["user_id"] for r in slates if json.loads(r["sections"])[0]["key"] == "top_picks")
    sections = json.loads(next(r["sections"] for r in slates if r["user_id"] == user))
    dropped = sections[0]["items"][0]["item_id"]
    # A catalog title with markup, on an item this user sees.
    cat_path = next(rd.path("features", "catalog").glob("*.parquet"))
    cat = pq.read_table(cat_path).to_pylist()
    shown = sections[0]["items"][1]["item_id"]
    for r in cat:
        if r["item_id"] == shown:
            r["title"] = EVIL
    pq.write_table(pa.Table.from_pylist(cat, schema=pq.read_schema(cat_path)), cat_path)

    engine = db.make_engine(cfg.database_url())
    keys = []
    for version in (1, 2):
        rows = [(r["user_id"], r["sections"]) for r in slates]
        if version == 2:
            changed = [dict(s) for s in sections]
            changed[0] = {**changed[0], "items": changed[0]["items"][1:]}
            rows = [(u, json.dumps(changed) if u == user else s) for u, s in rows]
        with engine.begin() as c:
            db.apply_migrations(c)
            run = db.begin_run(c, RUN_DATE, "main", {}, {"gate": {"passed": True}})
            sent = db.load_tables(c, run, rows, [(r["segment"], r["sections"]) for r in fallback])
            db.validate_loaded(c, run, sent, 0.0)
        with engine.begin() as c:
            db.switch(c, run)
        keys.append(run["run_key"])
    engine.dispose()
    title = next(r["title"] for r in cat if r["item_id"] == dropped)
    return {"cfg": cfg, "user": user, "dropped": dropped, "dropped_title": title, "shown": shown, "keys": keys}


@pytest.fixture()
def server(published):
    import urllib.request

    import uvicorn

    from recsys.preview.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(published["cfg"]), host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(base + "/healthz", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    yield base
    srv.should_exit = True
    t.join(10)


def test_preview_in_a_real_browser(server, published, tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium installed (apt-get install chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    user, (v1, v2) = published["user"], published["keys"]
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

        page.goto(server + "/")
        assert page.inner_text("#live") == v2
        statuses = page.locator("#runs tr td:nth-child(3)").all_inner_texts()
        assert sorted(statuses) == ["published", "superseded"]
        page.screenshot(path=str(shots / "runs.png"), full_page=True)

        page.fill("#search", user)
        page.click("header button")
        page.wait_for_selector("#run-key")
        assert page.inner_text("#user") == user and page.inner_text("#run-key") == v2
        assert page.locator(".section h3").first.inner_text() == "Top picks for you"
        cards = page.locator("[data-section=top_picks] .card")
        first = cards.first.get_attribute("data-item")
        assert first == published["shown"]  # v2 dropped the first pick
        # The title with markup is shown as text: escaped, not executed.
        assert cards.first.locator(".title").inner_text() == EVIL
        assert page.evaluate("window.__pwned") is None and dialogs == []
        assert page.locator("#history tr").count() > 0
        page.screenshot(path=str(shots / "user_live.png"), full_page=True)

        page.select_option("#version", v1)
        page.wait_for_function(f"document.querySelector('#run-key').innerText === {json.dumps(v1)}")
        assert page.locator("[data-section=top_picks] .card").first.get_attribute("data-item") == published["dropped"]
        page.screenshot(path=str(shots / "user_v1.png"), full_page=True)

        page.select_option("#version", "live")
        page.wait_for_function(f"document.querySelector('#run-key').innerText === {json.dumps(v2)}")
        page.click(f"a.diff-link[href*='a={v1}']")  # what changed since v1
        page.wait_for_selector("#diff")
        removed = page.inner_text("[data-section=top_picks] .removed").strip()
        assert page.inner_text("[data-section=top_picks] .added").strip() == ""
        assert removed in (published["dropped"], published["dropped_title"]), removed
        page.screenshot(path=str(shots / "diff.png"), full_page=True)

        page.goto(server + "/segments")
        assert page.locator("details[data-segment=all] .card").count() > 0
        page.screenshot(path=str(shots / "segments.png"), full_page=True)
        browser.close()
    assert len(list(shots.glob("*.png"))) == 5


@pytest.mark.postgres
def test_preview_reads_postgres_versions(pg_url, tmp_path):
    """The same pages against PostgreSQL (jsonb, partitions): live page through
    get_homepage, a kept version from its own table, the diff and the segment pages."""
    from fastapi.testclient import TestClient

    from recsys.config import load_config
    from recsys.preview.app import create_app
    from tests.publish.test_db import D1, D2, _pg_engine, publish

    e = _pg_engine(pg_url)
    r1, _ = publish(e, D1, "old", users=("u1", "u2"))
    r2, _ = publish(e, D2, "new", users=("u1", "u2"))
    e.dispose()
    cfg = load_config(overrides={"paths": {"work_root": str(tmp_path)}, "publish": {"database_url": pg_url}},
                      environ={})  # fmt: skip
    with TestClient(create_app(cfg)) as client:
        home = client.get("/").text
        assert r1["run_key"] in home and r2["run_key"] in home and ">published<" in home
        live = client.get("/user", params={"user_id": "u1"}).text
        assert 'data-item="new-u1"' in live and r2["run_key"] in live
        old = client.get("/user", params={"user_id": "u1", "version": r1["run_key"]}).text
        assert 'data-item="old-u1"' in old
        diff = client.get("/diff", params={"user_id": "u1", "a": r1["run_key"], "b": "live"}).text
        assert "new-u1" in diff and "old-u1" in diff
        segs = client.get("/segments", params={"version": r1["run_key"]}).text
        assert 'data-segment="all"' in segs and 'data-item="old-all"' in segs
        assert client.get("/user", params={"user_id": "stranger"}).text.count("segment") >= 1
