"""Results kept on disk between runs, under a key that hashes everything they depend on, so a
changed input, an edited module or an upgraded library is a miss, never a stale result.

The folder of a kind of result is `$QIEDGE_CACHE/<kind>`, by default under
`$XDG_CACHE_HOME/qiedge` (`~/.cache`); `QIEDGE_CACHE=off` keeps nothing. Entries are written whole
(a temporary file, then renamed), a lock per entry makes concurrent makers of one entry make it
once, and a cache that cannot be used warns and costs the saving, never the job. Deleting the
folder is always safe.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .files import sweep_stale, write_atomic

T = TypeVar("T")


def folder(kind: str) -> Path | None:
    """Where results of `kind` are kept, or None when the cache is off."""
    root = os.environ.get("QIEDGE_CACHE")
    if root == "off":
        return None
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qiedge"
    return Path(root) / kind


@functools.cache
def environment(code: tuple[str, ...], libraries: tuple[str, ...]) -> str:
    """A digest of the source of the `code` packages (found, not imported) and the versions of
    `libraries`: what every result of one kind depends on besides its own inputs."""
    digest = hashlib.sha256()
    for package in code:
        root = Path(importlib.util.find_spec(package).submodule_search_locations[0])
        for path in sorted(root.rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    for name in libraries:
        digest.update(f"{name}=={importlib.metadata.version(name)}\0".encode())
    return digest.hexdigest()


def key(environment: str, *parts) -> str:
    """The key of a result made in `environment` from what `parts` describe (their reprs)."""
    digest = hashlib.sha256(environment.encode())
    for part in parts:
        digest.update(repr(part).encode() + b"\0")
    return digest.hexdigest()[:32]


def cached(kind: str, name: str, make: Callable[[], bytes], load: Callable[[bytes], T]) -> T:
    """`load` of the entry `name` of `kind`, else of `make()`'s bytes, stored for next time. An
    entry that cannot be read or loaded (a crash mid-write, a damaged disk) is made again."""
    root = folder(kind)
    if root is None:
        return load(make())
    from filelock import FileLock  # the [torch] extra's: only the torch side makes cached results

    path = root / name
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path) + ".lock")
        lock.acquire()
    except OSError as e:
        warnings.warn(f"the {kind} cache {root} is not usable ({e}); going on without it", stacklevel=2)
        return load(make())
    try:
        if path.exists():
            try:
                return load(path.read_bytes())
            except Exception as e:  # whatever `load` raises on bad bytes: the entry is replaced
                warnings.warn(f"the {kind} cache: {path.name} is damaged ({e}); making it again", stacklevel=2)
        data = make()
        try:
            sweep_stale(path)  # what a killed maker of this entry left
            write_atomic(path, data)
        except OSError as e:
            warnings.warn(f"the {kind} cache: could not store {path.name} ({e})", stacklevel=2)
        return load(data)
    finally:
        lock.release()
