"""MovieLens (ml-latest-small layout) -> the input contract.

- ratings.csv -> `rate` events with the rating as `value`, partitioned by UTC day;
- movies.csv -> one catalog snapshot (dt = the day after the last rating): title,
  the first genre as `category` (genres are not a tree; the first is the primary one),
  all genres and the most common user tags in `description`, `created_at` = the
  movie's first rating (its first appearance on the "site");
- tags.csv (optional) enriches descriptions only; tags are not events.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)


class ImportError_(ValueError):
    """The source files are missing or do not look like MovieLens."""


def _require(path: Path) -> Path:
    if not path.is_file():
        raise ImportError_(f"MovieLens file not found: {path}")
    return path


def import_movielens(src: str | Path, out_root: str | Path, max_tags: int = 5) -> dict[str, object]:
    """Convert a MovieLens directory; returns counts and the suggested logical date."""
    src, out = Path(src), Path(out_root)
    ratings = pd.read_csv(_require(src / "ratings.csv"))
    movies = pd.read_csv(_require(src / "movies.csv"))
    missing = {"userId", "movieId", "rating", "timestamp"} - set(ratings.columns)
    if missing:
        raise ImportError_(f"ratings.csv lacks columns {sorted(missing)}")
    ts = pd.to_datetime(ratings["timestamp"], unit="s", utc=True).astype("datetime64[us, UTC]")
    events = pd.DataFrame(
        {
            "user_id": "u" + ratings["userId"].astype(str),
            "item_id": "m" + ratings["movieId"].astype(str),
            "event_type": "rate",
            "ts": ts,
            "value": ratings["rating"].astype(float),
        }
    )
    n_parts = _write_events(events, out)
    last_day = ts.max().date()
    snapshot = last_day + dt.timedelta(days=1)
    catalog = _catalog(movies, _top_tags(src, max_tags), events.groupby("item_id")["ts"].min(), ts.min())
    d = out / "catalog" / f"dt={snapshot.isoformat()}"
    d.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(catalog, preserve_index=False), d / "part-00000.parquet")
    info = {
        "events": len(events),
        "event_partitions": n_parts,
        "items": len(catalog),
        "users": int(events["user_id"].nunique()),
        "first_day": ts.min().date().isoformat(),
        "last_day": last_day.isoformat(),
        "suggested_date": snapshot.isoformat(),
    }
    log.info("movielens: imported %s", info)
    return info


def _top_tags(src: Path, max_tags: int) -> dict[int, list[str]]:
    """movieId -> its max_tags most frequent tags (lower-cased; ties by name); empty
    without tags.csv."""
    if not (src / "tags.csv").is_file():
        return {}
    tags = pd.read_csv(src / "tags.csv")
    tags["tag"] = tags["tag"].astype(str).str.strip().str.lower()
    top = tags.groupby(["movieId", "tag"]).size().rename("n").reset_index()
    top = top.sort_values(["movieId", "n", "tag"], ascending=[True, False, True])
    return {int(mid): grp["tag"].head(max_tags).tolist() for mid, grp in top.groupby("movieId")}


def _write_events(events: pd.DataFrame, out: Path) -> int:
    """One parquet file per day under events/dt=YYYY-MM-DD; returns the partition count."""
    n_parts = 0
    for day, part in events.groupby(events["ts"].dt.strftime("%Y-%m-%d"), sort=True):
        d = out / "events" / f"dt={day}"
        d.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), d / "part-00000.parquet")
        n_parts += 1
        if n_parts % 1000 == 0:
            log.info("movielens: wrote %d event partitions", n_parts)
    return n_parts


def _catalog(movies: pd.DataFrame, tags_by_movie: dict[int, list[str]], first_seen: pd.Series,
             default_created: pd.Timestamp) -> pd.DataFrame:  # fmt: skip
    """The catalog contract's rows: the first genre as the category, genres and top tags
    as the description, created at the movie's first rating (the first rating of all
    for movies nobody rated)."""
    genres = movies["genres"].fillna("(no genres listed)").astype(str)
    item_ids = "m" + movies["movieId"].astype(str)
    descs = []
    for mid, g in zip(movies["movieId"], genres, strict=True):
        parts = [f"Genres: {g.replace('|', ', ')}."]
        if tags_by_movie.get(int(mid)):
            parts.append("Tagged: " + ", ".join(tags_by_movie[int(mid)]) + ".")
        descs.append(" ".join(parts))
    created = [first_seen.get(i, default_created.to_pydatetime()) for i in item_ids]
    return pd.DataFrame(
        {
            "item_id": item_ids,
            "title": movies["title"].astype(str),
            "category": genres.str.split("|").str[0],
            "description": descs,
            "available": True,
            "created_at": pd.to_datetime(created, utc=True).astype("datetime64[us, UTC]"),
        }
    )
