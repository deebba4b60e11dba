"""`make test` runs one pytest-xdist worker per core. Each worker, and every process it starts,
computes on one thread: two workers of two spinning threads each on two cores run slower than
one worker of two, while one thread each keeps both cores busy with the suite's serial parts
(exporters, converters, subprocesses) as well."""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
