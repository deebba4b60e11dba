"""ONNX Runtime CPU latency of the transformer step, fp32 against INT8 and FP8 Q/DQ, for the
small preset (random weights, calibrated on the shipped prompts). Prints a table.

INT8 runs twice: on the kernels this CPU gets, and on the u8 x u8 kernels that CPUs without VNNI
get (runtime/ort_int8.py), so one machine shows what the exact int8 path costs elsewhere.

    python bench/quant_latency.py --size 512 --runs 5
"""

from __future__ import annotations

import argparse
import functools

import numpy as np
from common import artifacts, machine_header, median_seconds, model_dir, quantized, table


def main() -> None:
    from qiedge.core.artifacts import Artifacts
    from qiedge.core.layout import build_layout, transformer_feeds
    from qiedge.core.metrics import Comparison
    from qiedge.core.units import PIXELS_PER_TOKEN
    from qiedge.runtime import ort_int8
    from qiedge.runtime.backends.onnx_runtime import OnnxRuntimeBackend

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(machine_header(), flush=True)
    model = model_dir("small")
    paths = {"fp32": artifacts(model, "fp32"), **{fmt: quantized(model, fmt) for fmt in ("int8", "fp8")}}

    facts = Artifacts.open(paths["fp32"]).facts
    h = w = args.size // PIXELS_PER_TOKEN
    rng = np.random.default_rng(0)
    mask = np.ones((1, 40), dtype=bool)
    layout = build_layout(np.zeros(40, dtype=bool), mask, [(1, h, w)])
    context = Artifacts.open(paths["fp32"]).manifest["model"]["transformer"]["context_in_dim"]
    text = rng.standard_normal((1, 40, context), dtype=np.float32)
    feeds = transformer_feeds(layout, facts.axes_dims_rope, text, np.zeros((1, 0, facts.latent_channels), np.float32))
    prefix_feeds = feeds.prefix
    step_feeds = {
        "latents": rng.standard_normal((1, h * w, facts.latent_channels), dtype=np.float32),
        "timestep": np.array([0.6], np.float32),
        **feeds.step,
    }
    results = {}
    saturates = ort_int8.saturates
    for name, path in [*paths.items(), ("int8 u8u8 (no-VNNI kernels)", paths["int8"])]:
        ort_int8.saturates = (lambda: True) if "u8u8" in name else saturates
        backend = OnnxRuntimeBackend(Artifacts.open(path))
        feeds = {**step_feeds, **backend.load("transformer_prefix").run(prefix_feeds)}
        step = backend.load("transformer_step")
        seconds, out = median_seconds(functools.partial(step.run, feeds), args.runs)
        out = out["velocity"]
        size = sum(f.stat().st_size for f in (path / "transformer").iterdir() if f.suffix == ".bin") / 1e6
        results[name] = (seconds, out, size)
    base_s, base_v, _ = results["fp32"]
    rows = [
        [name, f"{s * 1e3:.0f}", f"{base_s / s:.2f}x", f"{Comparison.of(v, base_v).cosine:.5f}", f"{mb:.0f}"]
        for name, (s, v, mb) in results.items()
    ]
    print(
        f"\nsmall preset transformer step, {args.size}x{args.size} ({h * w} image + 40 text tokens), "
        f"ONNX Runtime CPU, median of {args.runs}\n"
    )
    print(table(["graph", "ms", "speed vs fp32", "velocity cosine vs fp32", "weights MB"], rows))


if __name__ == "__main__":
    main()
