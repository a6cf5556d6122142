"""Strict JSON for everything the product writes: manifest, metrics, pages, model meta.

PostgreSQL's json/jsonb (and every strict parser: browsers, Go, Java) rejects the
``NaN``/``Infinity`` tokens that Python's json module writes by default, while SQLite
accepts them; one NaN in a manifest once made every PostgreSQL publish fail. So every
writer goes through `dumps` here:
- a non-finite float (NaN, +/-Infinity, also numpy's) becomes ``null``: "no value";
- numpy scalars and arrays become plain numbers and lists; dates become ISO text;
  anything else unknown becomes its ``str`` (as ``default=str`` did before);
- ``allow_nan=False`` then guarantees that no such token can slip through.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def strict(obj: Any) -> Any:
    """obj with every non-finite float replaced by None and numpy/date types made plain.
    (numpy values are recognised by duck typing so that this module, imported by the
    pipeline at DAG parse time, does not import numpy.)"""
    if isinstance(obj, bool) or obj is None or isinstance(obj, str | int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {_key(k): strict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [strict(v) for v in obj]
    if isinstance(obj, dt.date | dt.datetime):
        return obj.isoformat()
    if type(obj).__module__ == "numpy" and hasattr(obj, "tolist"):
        return strict(obj.tolist())  # numpy scalar -> Python scalar, array -> list
    return str(obj)


def _key(k: Any) -> str:
    """A dict key as json.dumps writes the keys it accepts (so both paths of dumps give
    one text), anything else as its str."""
    if isinstance(k, str):
        return k
    if k is None or isinstance(k, int) or (isinstance(k, float) and math.isfinite(k)):
        return json.dumps(k)
    return str(k)


def dumps(obj: Any, *, indent: int | None = None, sort_keys: bool = False, compact: bool = False) -> str:
    """Strict JSON text (RFC 8259): never NaN or Infinity tokens.

    Plain JSON values (the pages: dicts, lists, str, finite floats, ints) are written as
    they are; json refuses anything else with allow_nan=False (ValueError: a non-finite
    float) or without a default (TypeError: numpy, dates, sets), and only then is the
    object walked by `strict`. The walk for every page was a quarter of the rerank
    stage (docs/benchmarks.md, "Re-ranking a batch of users at once")."""
    kw: dict[str, Any] = {"indent": indent, "sort_keys": sort_keys, "allow_nan": False,
                          "separators": (",", ":") if compact else None}  # fmt: skip
    try:
        return json.dumps(obj, **kw)
    except (ValueError, TypeError):
        return json.dumps(strict(obj), **kw)


def write(path: str | Path, obj: Any, *, indent: int | None = 2, sort_keys: bool = True) -> None:
    """Write strict JSON atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(dumps(obj, indent=indent, sort_keys=sort_keys))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())
