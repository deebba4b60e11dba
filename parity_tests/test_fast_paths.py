"""The CPU fast path (torch-bf16: autocast + inductor) against the fp32 reference."""

from __future__ import annotations

import pytest

from qiedge.runtime.evaluate import psnr
from qiedge.runtime.runner import open_runtime
from qiedge.runtime.sampler import Request, generate


@pytest.mark.slow
def test_compiled_bf16_keeps_the_image(tiny_dir):
    request = Request(["a red circle on the left"], width=64, height=64, seed=3)
    reference = open_runtime(model=tiny_dir, backend="torch")
    fast = open_runtime(model=tiny_dir, backend="torch-bf16")
    expected = generate(request, reference.facts, reference.sessions)
    assert psnr(generate(request, fast.facts, fast.sessions), expected, peak=1.0) >= 35
