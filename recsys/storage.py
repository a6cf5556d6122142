"""A work root that workers on different machines share: local paths, or any fsspec URL
(s3://, s3a://, gs://, hdfs://, abfs://, file://, memory://).

A local `paths.work_root` is used in place, as always. A URL is the run's home; each
process works in a local mirror (`paths.local_dir`) and syncs with it through fsspec
around every stage (recsys.pipeline): `pull` fetches the run's files that are missing or
differ locally, `push` uploads what the stage wrote and deletes, remotely, files the stage
deleted that were pulled. A push never deletes a file it never saw, so shard tasks on
different machines, each pushing only its parts, cannot delete one another's.
Numpy-free and cheap to import: the DAG's tasks call it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)
SNAPSHOT = ".synced"  # local file: what the mirror held after the last pull / push


def is_remote(root: str) -> bool:
    """A URL with a scheme (file:// included: it goes through fsspec like s3://)."""
    return "://" in root


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for a URL; s3a:// (Hadoop's name) is s3://."""
    import fsspec

    scheme = urlsplit(url).scheme
    if scheme == "s3a":
        url = "s3" + url[3:]
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path.rstrip("/")


def default_local_dir(work_root: str) -> Path:
    """Per-URL mirror under the temp directory when paths.local_dir is not set."""
    import hashlib

    tag = hashlib.sha256(work_root.encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"recsys-work-{tag}"


def _local_files(local: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for p in local.rglob("*"):
        if p.is_file() and p.name != SNAPSHOT and not p.name.endswith(".tmp"):
            st = p.stat()
            out[p.relative_to(local).as_posix()] = (st.st_size, st.st_mtime_ns)
    return out


def _read_snapshot(local: Path) -> dict[str, tuple[int, int]]:
    import json

    f = local / SNAPSHOT
    return {k: tuple(v) for k, v in json.loads(f.read_text()).items()} if f.is_file() else {}


def _write_snapshot(local: Path) -> None:
    import json

    local.mkdir(parents=True, exist_ok=True)
    (local / SNAPSHOT).write_text(json.dumps(_local_files(local)))


def pull(url: str, local: Path) -> int:
    """Fetch every remote file under url that is missing locally or differs in size;
    returns the number fetched."""
    fs, root = filesystem(url)
    if not fs.exists(root):
        local.mkdir(parents=True, exist_ok=True)
        _write_snapshot(local)
        return 0
    n = 0
    for path, info in fs.find(root, detail=True).items():
        rel = path[len(root) :].lstrip("/")
        dst = local / rel
        if dst.is_file() and dst.stat().st_size == info.get("size"):
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(path, str(dst))
        n += 1
    _write_snapshot(local)
    if n:
        log.info("storage: pulled %d files from %s", n, url)
    return n


def push(local: Path, url: str) -> tuple[int, int]:
    """Upload local files new or changed since the last sync; delete remote files that
    were synced and are gone locally. Returns (uploaded, deleted)."""
    fs, root = filesystem(url)
    before = _read_snapshot(local)
    now = _local_files(local)
    up = [rel for rel, sig in now.items() if before.get(rel) != sig]
    gone = [rel for rel in before if rel not in now]
    for rel in up:
        fs.makedirs(os.path.dirname(f"{root}/{rel}"), exist_ok=True)
        fs.put_file(str(local / rel), f"{root}/{rel}")
    for rel in gone:
        if fs.exists(f"{root}/{rel}"):
            fs.rm(f"{root}/{rel}")
    _write_snapshot(local)
    if up or gone:
        log.info("storage: pushed %d files to %s, deleted %d", len(up), url, len(gone))
    return len(up), len(gone)


def remove(url: str) -> None:
    fs, root = filesystem(url)
    if fs.exists(root):
        fs.rm(root, recursive=True)


def list_matching(work_root: str, pattern: str) -> list[str]:
    """Paths relative to the work root that match a glob, sorted."""
    if not is_remote(work_root):
        return sorted(p.relative_to(work_root).as_posix() for p in Path(work_root).glob(pattern))
    fs, root = filesystem(work_root)
    return sorted(p[len(root) :].lstrip("/") for p in fs.glob(f"{root}/{pattern}"))


def fetch(work_root: str, local_root: Path, rel: str) -> Path:
    """One file or directory under the work root, as a local path (fetched for URLs)."""
    if not is_remote(work_root):
        return Path(work_root) / rel
    fs, root = filesystem(work_root)
    dst = local_root / rel
    if fs.isdir(f"{root}/{rel}"):
        _get_dir(fs, f"{root}/{rel}", dst)
    elif not (dst.is_file() and dst.stat().st_size == fs.size(f"{root}/{rel}")):
        dst.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(f"{root}/{rel}", str(dst))
    return dst


def _get_dir(fs: Any, src: str, dst: Path) -> None:
    for path in fs.find(src):
        out = dst / path[len(src) :].lstrip("/")
        out.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(path, str(out))


def pull_matching(work_root: str, local_root: Path, pattern: str) -> list[Path]:
    """Fetch the files matching a glob under the work root (e.g. earlier runs'
    metrics.json) into the local mirror; returns their local paths. Local roots: the
    glob itself."""
    if not is_remote(work_root):
        return sorted(Path(work_root).glob(pattern))
    fs, root = filesystem(work_root)
    out = []
    for path in sorted(fs.glob(f"{root}/{pattern}")):
        dst = local_root / path[len(root) :].lstrip("/")
        if not (dst.is_file() and dst.stat().st_size == fs.size(path)):
            dst.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(path, str(dst))
        out.append(dst)
    return out
