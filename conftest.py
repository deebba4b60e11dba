"""`make test` runs one pytest-xdist worker per core. Each worker, and every process it starts,
computes on one thread: two workers of two spinning threads each on two cores run slower than
one worker of two, while one thread each keeps both cores busy with the suite's serial parts
(exporters, converters, subprocesses) as well.

The run gets a trace cache of its own (export/trace_cache.py), made before the workers start so
they and the CLI processes they start share it: each graph is traced once per run, and never
read from a cache an earlier run left."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

MADE_CACHE = pytest.StashKey[str]()

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"


def pytest_configure(config):
    if "QIEDGE_CACHE" not in os.environ:
        config.stash[MADE_CACHE] = os.environ["QIEDGE_CACHE"] = tempfile.mkdtemp(prefix="qiedge-cache-")


def pytest_unconfigure(config):
    made = config.stash.get(MADE_CACHE, None)
    if made is not None:
        shutil.rmtree(made, ignore_errors=True)
        del os.environ["QIEDGE_CACHE"]
