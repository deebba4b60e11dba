"""The on-disk cache (core/disk_cache.py): made once and read back, kept nowhere when off, a killed
writer's leftovers swept, and a folder that cannot be used costing only the saving."""

from __future__ import annotations

import subprocess
import sys

import pytest
from qiedge.core import disk_cache
from qiedge.core.files import staging_prefix


def _counting(data: bytes):
    calls = []

    def make() -> bytes:
        calls.append(1)
        return data

    return make, calls


def test_an_entry_is_made_once_and_read_back(tmp_path, monkeypatch):
    monkeypatch.setenv("QIEDGE_CACHE", str(tmp_path))
    make, calls = _counting(b"made")
    assert disk_cache.cached("things", "a.bin", make) == b"made"
    assert disk_cache.cached("things", "a.bin", make) == b"made"
    assert len(calls) == 1 and (tmp_path / "things" / "a.bin").read_bytes() == b"made"
    other, other_calls = _counting(b"other")
    assert disk_cache.cached("things", "b.bin", other) == b"other" and len(other_calls) == 1


def test_off_keeps_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("QIEDGE_CACHE", "off")
    monkeypatch.chdir(tmp_path)
    make, calls = _counting(b"made")
    disk_cache.cached("things", "a.bin", make)
    disk_cache.cached("things", "a.bin", make)
    assert len(calls) == 2 and disk_cache.folder("things") is None and list(tmp_path.iterdir()) == []


def test_a_killed_writers_leftover_is_swept(tmp_path, monkeypatch):
    monkeypatch.setenv("QIEDGE_CACHE", str(tmp_path))
    entry = tmp_path / "things" / "a.bin"
    entry.parent.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = entry.parent / f".a.bin.{dead.stdout.strip()}.half.tmp"
    leftover.write_bytes(b"half")
    live = entry.parent / f"{staging_prefix(entry)}other.tmp"  # this process's: a writer still at work
    live.write_bytes(b"half")
    disk_cache.cached("things", "a.bin", lambda: b"made")
    assert not leftover.exists() and live.exists() and entry.read_bytes() == b"made"


def test_an_unusable_folder_warns_and_makes(tmp_path, monkeypatch):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    monkeypatch.setenv("QIEDGE_CACHE", str(not_a_folder))
    with pytest.warns(UserWarning, match=r"the things cache .*file/things is not usable"):
        assert disk_cache.cached("things", "a.bin", lambda: b"made") == b"made"


def test_the_key_follows_the_code_and_the_parts():
    environment = disk_cache.environment(("qiedge.core",), ("numpy",))
    assert environment == disk_cache.environment(("qiedge.core",), ("numpy",))
    assert environment != disk_cache.environment(("qiedge.core",), ("numpy", "pillow"))
    assert disk_cache.key(environment, 1, "a") == disk_cache.key(environment, 1, "a")
    keys = {disk_cache.key(environment, 1, "a"), disk_cache.key(environment, 2, "a"), disk_cache.key("x", 1, "a")}
    assert len(keys) == 3
