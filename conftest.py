"""`make test` runs one pytest-xdist worker per core. Each worker, and every process it starts,
computes on one thread: two workers of two spinning threads each on two cores run slower than
one worker of two, while one thread each keeps both cores busy with the suite's serial parts
(exporters, converters, subprocesses) as well.

The run gets a cache of its own (core/disk_cache.py), made before the workers start so they and
the CLI processes they start share it: each graph is traced, and each model calibrated on a
calibration set, once per run, and nothing is read from a cache an earlier run left.

Files run longest first: `--dist loadfile` hands each file to one worker in collection order (the
Makefile turns off xdist's own order, most tests first), and this collection puts the files with
the most slow-marked tests first, so the long files start early and the short ones fill in at the
end (before this order, a run here had one worker finish 250 s before the other, running the Core
ML compression file last).

Between files, what is still alive is frozen out of the garbage collector (`gc.freeze`): a worker
lives for the whole run and gathers about a million long-lived objects (the libraries it imported
and their caches), and coremltools runs a full `gc.collect()` per conversion, which took 1 s each
late in a worker (the Core ML op tests after a parity file: 1.32 s a test, 0.39 s with the freeze)."""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
from collections import Counter

import pytest

MADE_CACHE = pytest.StashKey[str]()

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"


def pytest_configure(config):
    if "QIEDGE_CACHE" not in os.environ:
        config.stash[MADE_CACHE] = os.environ["QIEDGE_CACHE"] = tempfile.mkdtemp(prefix="qiedge-cache-")


def pytest_collection_modifyitems(items):
    slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])  # stable: a file's tests keep their order


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    try:
        return (yield)
    finally:  # after pytest has let go of the test's fixture values, which a freeze would keep
        if nextitem is None or nextitem.path != item.path:
            gc.collect()
            gc.freeze()


def pytest_unconfigure(config):
    made = config.stash.get(MADE_CACHE, None)
    if made is not None:
        shutil.rmtree(made, ignore_errors=True)
        del os.environ["QIEDGE_CACHE"]
