"""File helpers shared by everything that writes a directory of results."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_prompts(path: Path, what: str) -> list[str]:
    """The non-blank lines of a prompts file, stripped; `what` names the file in errors."""
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{what} {path} holds no prompts (one per line)")
    return prompts


def staging_prefix(out: Path) -> str:
    """The hidden name of what is being written towards `out`, with the writer's process id, so
    a later writer can tell a killed run's leftovers from a live run's work."""
    return f".{out.name}.{os.getpid()}."


def sweep_stale(out: Path) -> None:
    """Remove what killed writers of `out` left beside it (a SIGKILL leaves no time to clean up)."""
    for leftover in out.parent.glob(f".{glob.escape(out.name)}.*"):
        pid = leftover.name[len(out.name) + 2 :].partition(".")[0]
        if pid.isdigit() and not _alive(int(pid)):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write a file that appears whole or not at all."""
    handle, tmp = tempfile.mkstemp(prefix=staging_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def staged_directory(out: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `out` that becomes `out` only if the block succeeds.

    A failure or interruption removes it, so `out` is never left half-written; an `out` that
    already has content is refused up front. A killed run's folder is removed by the next run.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} already exists and is not empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(out)
    tmp = Path(tempfile.mkdtemp(prefix=staging_prefix(out), dir=out.parent))
    try:
        yield tmp
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
