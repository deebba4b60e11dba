"""The on-disk cache (core/disk_cache.py): made once and read back, once for concurrent makers,
kept nowhere when off, a killed writer's leftovers swept, a damaged entry made again, a folder
that cannot be used costing only the saving, and the key following an edit of the code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

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
    assert disk_cache.cached("things", "a.bin", make, bytes) == b"made"
    assert disk_cache.cached("things", "a.bin", make, bytes) == b"made"
    assert len(calls) == 1 and (tmp_path / "things" / "a.bin").read_bytes() == b"made"
    other, other_calls = _counting(b"other")
    assert disk_cache.cached("things", "b.bin", other, bytes) == b"other" and len(other_calls) == 1


def test_off_keeps_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("QIEDGE_CACHE", "off")
    monkeypatch.chdir(tmp_path)
    make, calls = _counting(b"made")
    disk_cache.cached("things", "a.bin", make, bytes)
    disk_cache.cached("things", "a.bin", make, bytes)
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
    disk_cache.cached("things", "a.bin", lambda: b"made", bytes)
    assert not leftover.exists() and live.exists() and entry.read_bytes() == b"made"


def test_an_unusable_folder_warns_and_makes(tmp_path, monkeypatch):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    monkeypatch.setenv("QIEDGE_CACHE", str(not_a_folder))
    with pytest.warns(UserWarning, match=r"the things cache .*file/things is not usable"):
        assert disk_cache.cached("things", "a.bin", lambda: b"made", bytes) == b"made"


def test_concurrent_makers_make_an_entry_once(tmp_path):
    maker = textwrap.dedent(
        """
        import sys, time
        from pathlib import Path
        from qiedge.core import disk_cache

        def make():
            with open(sys.argv[1], "a") as log:
                log.write("made\\n")
            time.sleep(1)  # long enough for the other process to wait on the lock
            return b"made"

        assert disk_cache.cached("things", "a.bin", make, bytes) == b"made"
        """
    )
    log = tmp_path / "log"
    env = {**os.environ, "QIEDGE_CACHE": str(tmp_path / "cache")}
    makers = [subprocess.Popen([sys.executable, "-c", maker, str(log)], env=env) for _ in range(2)]
    assert [m.wait() for m in makers] == [0, 0]
    assert log.read_text() == "made\n"


def test_a_damaged_entry_is_made_again(tmp_path, monkeypatch):
    monkeypatch.setenv("QIEDGE_CACHE", str(tmp_path))
    entry = tmp_path / "things" / "a.json"
    entry.parent.mkdir()
    entry.write_bytes(b'{"half": ')  # what a crash mid-write could leave
    with pytest.warns(UserWarning, match="a.json is damaged"):
        assert disk_cache.cached("things", "a.json", lambda: b'{"whole": 1}', json.loads) == {"whole": 1}
    assert json.loads(entry.read_bytes()) == {"whole": 1}


def test_the_key_follows_the_code_and_the_parts(tmp_path, monkeypatch):
    package = tmp_path / "qiedge_probe"
    package.mkdir()
    (package / "__init__.py").write_text("A = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = disk_cache.environment(("qiedge_probe",), ("numpy",))
    assert before == disk_cache.environment(("qiedge_probe",), ("numpy",))
    (package / "__init__.py").write_text("A = 2\n")
    disk_cache.environment.cache_clear()  # as a new process would
    assert disk_cache.environment(("qiedge_probe",), ("numpy",)) != before
    keys = {disk_cache.key(before, 1, "a"), disk_cache.key(before, 2, "a"), disk_cache.key("x", 1, "a")}
    assert len(keys) == 3 and disk_cache.key(before, 1, "a") == disk_cache.key(before, 1, "a")
