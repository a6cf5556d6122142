"""What the preview shows, read from the database (as the site reads it, plus kept
versions) and from run directories (catalog cards, the user's recent history).
Read-only: nothing here writes anywhere."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pyarrow.parquet as pq
from sqlalchemy import text

from recsys.config import Config
from recsys.publish import db


def run_dir_of(work_root: Path, run_key: str) -> Path:
    """'2026-11-22/main/v3' -> <work_root>/runs/2026-11-22/main (the run that built it)."""
    date, run_id, _v = run_key.split("/")
    return work_root / "runs" / date / run_id


class PreviewData:
    def __init__(self, cfg: Config) -> None:
        self.work_root = cfg.local_work_root()
        self.engine = db.make_engine(cfg.database_url())
        self.database = self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    # ---- versions -----------------------------------------------------------------
    def runs(self, limit: int = 50) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            rows = db.list_runs(c, limit)
        for r in rows:
            m = r.pop("metrics")
            m = json.loads(m) if isinstance(m, str) else (m or {})
            gate = m.get("gate") or {}
            r["gate"] = "skipped" if gate.get("enabled") is False else ("passed" if gate.get("passed") else "failed")
            ranked = (m.get("methods") or {}).get("ranked") or {}
            r["ndcg10"] = ranked.get("ndcg@10")
            r["kept"] = r["status"] in ("published", "superseded", "loaded")
        return rows

    def live_key(self) -> str | None:
        with self.engine.connect() as c:
            live = db.current_published(c)
        return live["run_key"] if live else None

    def page(self, user_id: str, version: str | None) -> dict[str, Any] | None:
        """version None or 'live': exactly what the site gets from get_homepage."""
        with self.engine.connect() as c:
            if version in (None, "", "live"):
                return db.get_homepage(c, user_id)
            return db.version_page(c, version, user_id)

    def segments(self, version: str) -> dict[str, list[dict[str, Any]]]:
        with self.engine.connect() as c:
            return db.segment_pages(c, version)

    def sample_users(self, n: int = 8) -> list[str]:
        with self.engine.connect() as c:
            v = db.names_for(c).current
            return [r[0] for r in c.execute(text(f"SELECT user_id FROM {v} ORDER BY user_id LIMIT :n"), {"n": n})]

    # ---- run directories ---------------------------------------------------------------
    def cards(self, run_key: str | None) -> dict[str, dict[str, Any]]:
        if not run_key:
            return {}
        return _catalog_cards(run_dir_of(self.work_root, run_key) / "features" / "catalog")

    def history(self, run_key: str | None, user_id: str, n: int = 20) -> list[dict[str, Any]]:
        """The user's last n positive events (newest first) from the run's features."""
        if not run_key:
            return []
        path = run_dir_of(self.work_root, run_key) / "features" / "full" / "sequences"
        if not path.exists():
            return []
        t = ds.dataset(path, format="parquet").to_table(filter=ds.field("user_id") == user_id)
        if t.num_rows == 0:
            return []
        row = t.slice(0, 1).to_pylist()[0]
        events = list(zip(row["items"], row["types"], row["ts"], strict=True))[-n:]
        cards = self.cards(run_key)
        return [{**cards.get(i, {"item_id": i, "title": ""}), "event": e, "ts": str(ts)[:16]}
                for i, e, ts in reversed(events)]  # fmt: skip


@functools.lru_cache(maxsize=8)
def _catalog_cards(path: Path) -> dict[str, dict[str, Any]]:
    if not path.exists():
        return {}
    t = pq.read_table(path, columns=["item_id", "title", "category", "brand", "price"])
    out = {}
    for r in t.to_pylist():
        price = r["price"]
        r["price"] = None if price is None or (isinstance(price, float) and math.isnan(price)) else f"{price:.2f}"
        out[r["item_id"]] = r
    return out


def page_diff(a: dict[str, Any] | None, b: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per section key: items only in a (removed), only in b (added), in both."""
    sa = {s["key"]: s for s in (a or {}).get("sections", [])}
    sb = {s["key"]: s for s in (b or {}).get("sections", [])}
    out = []
    for key in list(sa) + [k for k in sb if k not in sa]:
        ia = [it["item_id"] for it in sa.get(key, {}).get("items", [])]
        ib = [it["item_id"] for it in sb.get(key, {}).get("items", [])]
        out.append({
            "key": key,
            "title": (sb.get(key) or sa.get(key) or {}).get("title", key),
            "removed": [i for i in ia if i not in ib],
            "added": [i for i in ib if i not in ia],
            "kept": [i for i in ib if i in ia],
        })  # fmt: skip
    return out
