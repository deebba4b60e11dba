"""TensorRT optimization profiles from the specs, and the `trtexec` commands that build engines
with them.

A profile gives every input of a graph its min / opt / max shape. Shapes come from the graph
contract's symbolic dims (core/contract.py), each given a range here: image dims from the size
buckets (smallest to largest, tuned for the largest), prompt dims from one token up to the
longest prompt length (tuned for the first), batch from one to `max_batch`. A static profile
(min = opt = max, which CUDA graphs need) takes exactly one size, one prompt length and a batch
of `max_batch`; the runtime pads shorter prompts and smaller batches into it.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from qiedge.core.buckets import PROMPT_DIMS, SIZE_DIMS, Size, concrete_shape, prompt_dims, size_dims
from qiedge.core.units import MAX_SIDE, PIXELS_PER_SLOT

from .specs import ComponentSpec, ModelConfigs, declared_shape

LEVELS = ("min", "opt", "max")


@dataclass(frozen=True)
class ProfileRanges:
    sizes: tuple[Size, ...]
    prompt_lengths: tuple[int, ...]
    max_batch: int = 1
    static: bool = False

    def check(self) -> None:
        if self.static and (len(self.sizes) > 1 or len(self.prompt_lengths) > 1):
            raise ValueError("a static-shape engine takes one size and one prompt length (--sizes, --prompt-lengths)")
        if self.max_batch < 1:
            raise ValueError(f"--max-batch must be at least 1, got {self.max_batch}")

    def dims(self, dropped: int) -> dict[str, tuple[int, int, int]]:
        """Every symbolic dim's (min, opt, max); `dropped`: the system turn's tokens (the encoder
        reads them, the transformer does not)."""
        by_size = [size_dims(s) for s in self.sizes]
        largest = size_dims(max(self.sizes, key=lambda s: s.width * s.height))
        ranges = {d: (min(b[d] for b in by_size), largest[d], max(b[d] for b in by_size)) for d in SIZE_DIMS}
        shortest = 1 if not self.static else self.prompt_lengths[0]
        low, opt, high = (prompt_dims(n, dropped) for n in (shortest, self.prompt_lengths[0], self.prompt_lengths[-1]))
        ranges |= {d: (low[d], opt[d], high[d]) for d in PROMPT_DIMS}
        batch = (self.max_batch,) * 3 if self.static else (1, 1, self.max_batch)
        # Text-to-image engines: the encoder's image tables hold their zero row alone; a vision
        # engine takes one condition image of up to MAX_SIDE squared pixels.
        vision = (1, (1024 // 32) ** 2, (MAX_SIDE // PIXELS_PER_SLOT) ** 2)
        return ranges | {"batch": batch, "cond": (0, 0, 0), "image_rows": (1, 1, 1), "vision": vision}


def profile(spec: ComponentSpec, configs: ModelConfigs, dims: dict[str, tuple[int, int, int]]) -> dict:
    """{input: {"min": shape, "opt": shape, "max": shape}} for one graph."""
    return {
        t.name: {
            level: list(concrete_shape(declared_shape(t, configs), {d: r[i] for d, r in dims.items()}))
            for i, level in enumerate(LEVELS)
        }
        for t in spec.inputs
    }


def is_static(shapes: dict) -> bool:
    return all(s["min"] == s["max"] for s in shapes.values())


@dataclass(frozen=True)
class BuildSettings:
    """How an engine is built, the same whether by the Python API or by trtexec."""

    optimization_level: int = 3  # bounds build memory and time on the 7B transformer
    workspace_mb: int = 4096
    weight_streaming: bool = False
    timing_cache: str = "timing.cache"


def _shapes(shapes: dict, level: str) -> str:
    return ",".join(f"{name}:{'x'.join(map(str, s[level]))}" for name, s in shapes.items())


def trtexec_command(onnx: str, engine: str, shapes: dict, settings: BuildSettings) -> list[str]:
    """One engine's trtexec command (paths relative to the artifacts directory)."""
    stem = engine.removesuffix(".plan")
    command = [
        "trtexec",
        f"--onnx={onnx}",
        "--stronglyTyped",  # TensorRT 10 needs it (weight streaming too); 11 accepts it, always strongly typed
        *(f"--{level}Shapes={_shapes(shapes, level)}" for level in LEVELS),
        f"--timingCacheFile={settings.timing_cache}",
        f"--builderOptimizationLevel={settings.optimization_level}",
        f"--memPoolSize=workspace:{settings.workspace_mb}",  # in MiB, trtexec's default unit
        *(["--allowWeightStreaming"] if settings.weight_streaming else []),
        "--profilingVerbosity=detailed",
        f"--exportLayerInfo={stem}.layers.json",
        f"--saveEngine={engine}",
        "--skipInference",
    ]
    return command


def build_script(commands: Sequence[list[str]], header: str) -> str:
    """A bash script running each command from the artifacts directory; `TRTEXEC` may name the
    binary (JetPack installs it outside PATH, as /usr/src/tensorrt/bin/trtexec)."""
    lines = [
        "#!/usr/bin/env bash",
        *(f"# {line}" for line in header.splitlines()),
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        'TRTEXEC="${TRTEXEC:-trtexec}"',
    ]
    for command in commands:
        lines.append("")
        lines.append(" \\\n    ".join(['"$TRTEXEC"', *(shlex.quote(a) for a in command[1:])]))
    return "\n".join(lines) + "\n"
