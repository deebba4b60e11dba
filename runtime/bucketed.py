"""A session over fixed-shape functions (core/buckets.py: Core ML's buckets, or a static TensorRT
engine's one shape), which takes any shapes its functions cover; and one over a dynamic engine
whose profile ends below the request's batch (`PartedSession`).

- A batch runs in parts of the functions' batch: one item at a time where every function has
  batch 1 (Core ML), up to `--max-batch` items at once, the last part padded, on a static
  TensorRT engine.
- Prompt dims (the encoder's tokens, the text, the prefix) are padded at the end up to the
  smallest function that holds them, with zeros (False for masks), and outputs are cut back. That
  is exact for these graphs: attention is causal or block-causal, and padded keys are masked
  (their attention mask or `key_valid` is zero), so no real position ever reads a padded one;
  padded batch items are zeros, computed and dropped.
- Size dims (the image) must equal a function's; a size with no function is refused, naming the
  ones there are.
- Arrays stay where they are: NumPy arrays are padded in NumPy, torch tensors (a GPU engine's
  K/V) on their device; outputs are joined by the backend's `arrays`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from qiedge.core.buckets import PROMPT_DIMS, SIZE_DIMS, concrete_shape
from qiedge.core.units import PIXELS_PER_TOKEN

from .arrays import HOST, Arrays

RunFunction = Callable[[str, dict], dict]


class BucketError(ValueError):
    pass


class BucketedSession:
    def __init__(self, component: str, entry: dict, run_function: RunFunction, arrays: Arrays = HOST):
        self.component, self.run_function, self.arrays = component, run_function, arrays
        self.functions = entry["functions"]  # name -> dims
        self.inputs = {t["name"]: t for t in entry["inputs"]}
        self.outputs = {t["name"]: t for t in entry["outputs"]}
        self.empty = entry.get("empty_inputs", [])  # inputs every bucket fixes to zero elements
        self.part = max(dims.get("batch", 1) for dims in self.functions.values())

    def run(self, feeds: dict) -> dict:
        for name in self.empty:
            if name in feeds and math.prod(feeds[name].shape):
                raise BucketError(
                    f"{self.component}: no bucket takes {name} (shape {tuple(feeds[name].shape)}): "
                    "these packages were exported for text-to-image only"
                )
        return in_parts(self.component, self.inputs, self.outputs, self.arrays, feeds, self.part, self._run_part)

    def _run_part(self, feeds: dict) -> dict:
        actual = read_dims(self.component, self.inputs, {n: tuple(v.shape) for n, v in feeds.items()})
        name = self._choose(actual)
        dims = self.functions[name]
        padded = {n: _pad(v, concrete_shape(self.inputs[n]["shape"], dims)) for n, v in feeds.items()}
        out = self.run_function(name, padded)
        return {n: _cut(out[n], concrete_shape(spec["shape"], actual)) for n, spec in self.outputs.items()}

    def _choose(self, actual: dict[str, int]) -> str:
        def fits(dims):
            return all(
                dims[d] == n if d in SIZE_DIMS or d == "cond" else dims[d] >= n for d, n in actual.items() if d in dims
            )

        fitting = [name for name, dims in self.functions.items() if fits(dims)]
        if not fitting:
            raise BucketError(f"{self.component}: {self._describe(actual)} has no bucket; exported: {self._buckets()}")
        return min(fitting, key=lambda name: sum(self.functions[name].get(d, 0) for d in PROMPT_DIMS))

    def _describe(self, dims: dict[str, int]) -> str:
        parts = []
        if "latent_height" in dims:
            parts.append(f"size {PIXELS_PER_TOKEN * dims['latent_width']}x{PIXELS_PER_TOKEN * dims['latent_height']}")
        elif "target" in dims:
            parts.append(f"{dims['target']} image tokens")
        if "text" in dims or "prefix" in dims:
            parts.append(f"a prompt of {dims.get('text', dims.get('prefix'))} tokens")
        elif "tokens" in dims:
            parts.append(f"a prompt of {dims['tokens']} tokens with its chat template")
        if dims.get("cond"):
            parts.append(f"{dims['cond']} condition-image tokens")
        return " with ".join(parts) or "this input"

    def _buckets(self) -> str:
        return ", ".join(name.partition("_")[2] or name for name in self.functions)


class PartedSession:
    """A session that takes any batch, run `part` items at a time: a dynamic TensorRT engine's
    profile ends at `--max-batch`, and the sampler's batch is the request's."""

    def __init__(self, component: str, entry: dict, session, part: int, arrays: Arrays = HOST):
        self.component, self.session, self.part, self.arrays = component, session, part, arrays
        self.inputs = {t["name"]: t for t in entry["inputs"]}
        self.outputs = {t["name"]: t for t in entry["outputs"]}

    def run(self, feeds: dict) -> dict:
        return in_parts(self.component, self.inputs, self.outputs, self.arrays, feeds, self.part, self.session.run)


def in_parts(
    component: str, inputs: dict, outputs: dict, arrays: Arrays, feeds: dict, part: int, run: Callable[[dict], dict]
) -> dict:
    """`run` over `part` batch items of `feeds` at a time (those `inputs` declares), the outputs
    joined along their batch axes (`inputs` and `outputs`: name -> manifest entry)."""
    feeds = {n: v for n, v in feeds.items() if n in inputs}
    axes = {n: _axis(inputs[n]) for n in feeds}
    if all(axis is None for axis in axes.values()):  # one item by its contract (the vision tower's image)
        return run(feeds)
    sizes = {v.shape[axes[n]] for n, v in feeds.items() if axes[n] is not None}
    if len(sizes) != 1 or not min(sizes):
        raise ValueError(f"{component}: the inputs' batch sizes are {sorted(sizes)}: one, of at least 1")
    parts = [
        run({n: _span(v, axes[n], start, part) for n, v in feeds.items()}) for start in range(0, sizes.pop(), part)
    ]
    return {
        name: arrays.concat([p[name] for p in parts], axis=_axis(spec))
        if _axis(spec) is not None and len(parts) > 1
        else parts[0][name]
        for name, spec in outputs.items()
    }


def _axis(tensor: dict) -> int | None:
    return tensor["shape"].index("batch") if "batch" in tensor["shape"] else None


def read_dims(component: str, inputs: dict[str, dict], shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """The symbolic dims of inputs of these shapes, read off their declared shapes (`inputs`:
    name -> its manifest entry)."""
    dims = {}
    for name, shape in shapes.items():
        declared = inputs[name]["shape"]
        if len(declared) != len(shape):
            raise ValueError(f"{component}: {name} has shape {tuple(shape)}, declared {declared}")
        for symbol, size in zip(declared, shape):
            if not isinstance(symbol, str):
                continue
            factor, _, dim = symbol.rpartition("*")
            count, rest = divmod(size, int(factor or 1))
            if rest or dims.setdefault(dim, count) != count:
                raise ValueError(f"{component}: {name}'s {symbol} ({size}) disagrees with the other inputs")
    return dims


def _span(value, axis: int | None, start: int, count: int):
    """`count` items from `start` along the batch axis (a view, NumPy's or torch's)."""
    if axis is None:
        return value
    index = [slice(None)] * value.ndim
    index[axis] = slice(start, start + count)
    return value[tuple(index)]


def _pad(value, shape: tuple[int, ...]):
    """`value` with zeros after its end up to `shape`, where it lives."""
    if tuple(value.shape) == shape:
        return value
    if value.ndim != len(shape) or any(have > want for have, want in zip(value.shape, shape)):
        raise BucketError(f"cannot pad {tuple(value.shape)} to {shape}")
    if isinstance(value, np.ndarray):
        return np.pad(value, [(0, want - have) for have, want in zip(value.shape, shape)])
    padded = value.new_zeros(shape)  # a torch tensor, on its device
    padded[tuple(slice(0, n) for n in value.shape)] = value
    return padded


def _cut(value, shape: tuple[int, ...]):
    return value[tuple(slice(0, n) for n in shape)]
