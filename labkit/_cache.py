"""Where labkit keeps what it builds once per machine: tool builds, converted models, hashes.

Everything lives outside the checkout (``~/.cache/labkit`` unless ``LABKIT_CACHE`` says
otherwise) and is keyed by version or content hash, so a fresh clone reuses it and an
upgrade never picks up a stale build.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """Return (and create) a folder under labkit's cache."""
    root = Path(os.environ.get("LABKIT_CACHE", Path.home() / ".cache" / "labkit")).expanduser()
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, remembered on disk by (path, size, mtime) so big files hash once."""
    p = Path(path).resolve()
    st = p.stat()
    key = hashlib.sha256(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:32]
    memo = cache_dir("sha256") / key
    if memo.exists() and len(known := memo.read_text().strip()) == 64:
        return known
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    write_atomically(memo, digest)
    return digest


def write_atomically(path: Path, text: str) -> None:
    """Another process reading ``path`` meanwhile sees the old file or the new one, never half."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".tmp-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def build_atomically(target: Path, build: Callable[[Path], None]) -> Path:
    """Run ``build(tmp)`` into a temporary sibling folder and rename it to ``target``.

    A build that is interrupted leaves no half-made ``target`` behind, so the next call
    starts again instead of trusting a broken cache entry.
    """
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        build(tmp)
        (tmp / ".complete").write_text(json.dumps({"target": target.name}))
        try:
            tmp.rename(target)
        except OSError:
            if not target.exists():  # another process won the race: keep theirs
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
