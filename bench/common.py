"""Shared by the benchmarks: timing, a cached model directory, and table printing."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache"


def median_seconds(fn: Callable[[], object], runs: int, warmup: int = 1) -> tuple[float, object]:
    """Median wall time of `runs` calls after `warmup` untimed ones; returns it with the last result."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def machine_header() -> str:
    """Where the figures come from: the CPU, its features, and the threads the libraries use."""
    import torch
    from qiedge.runtime.hardware import detect

    cpu = detect()
    return (
        f"CPU: {cpu.summary()}\nfeatures: {' '.join(sorted(cpu.features))}\n"
        f"torch {torch.__version__} (ATen {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads)"
    )


def model_dir(preset: str, seed: int = 0) -> Path:
    from qiedge.reference_model import presets
    from qiedge.reference_model.model_dir import init_model_dir

    path = CACHE / f"{preset}-seed{seed}"
    if not (path / "model_index.json").is_file():
        init_model_dir(presets.get_preset(preset), path, seed=seed)
    return path


def artifacts(model: Path, precision: str, optimize: str = "cpu") -> Path:
    """ONNX artifacts of a model, exported once and cached (`optimize`: ONNX Runtime's fusions)."""
    from qiedge.export.run import export_artifacts
    from qiedge.reference_model.model_dir import ModelDir

    path = CACHE / f"{model.name}-onnx-{precision}-{optimize}"
    if not (path / "manifest.json").is_file():
        options = {"optimize": optimize}
        export_artifacts(path, precision=precision, model=ModelDir.open(model), target_options=options)
    return path


def quantized(model: Path, recipe_name: str, log=print) -> Path:
    """Quantized ONNX artifacts of a model (fused for ONNX Runtime's CPU), made once and cached;
    calibrated on 8 of the shipped prompts, one of them on the CFG path, to keep the bench short."""
    from dataclasses import replace

    from qiedge.quantization.recipe import Recipe
    from qiedge.quantization.run import quantize

    path = CACHE / f"{model.name}-onnx-{recipe_name}"
    if not (path / "manifest.json").is_file():
        recipe = Recipe.load(recipe_name)
        recipe = replace(recipe, calibration_set=replace(recipe.calibration_set, count=8, cfg_prompts=1))
        quantize(model, recipe, path, log=log)
    return path


def table(headers: list[str], rows: list[list]) -> str:
    cells = [headers] + [
        [c if isinstance(c, str) else f"{c:.3g}" if isinstance(c, float) else str(c) for c in row] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"

    return "\n".join(
        [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells[1:]]
    )
