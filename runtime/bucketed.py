"""A session over fixed-shape functions (core/buckets.py), which takes any shapes its buckets cover.

- Batches run one item at a time: every function has batch 1.
- Prompt dims (the encoder's tokens, the text, the prefix) are padded at the end up to the
  smallest bucket that holds them, with zeros (False for masks), and outputs are cut back. That
  is exact for these graphs: attention is causal or block-causal, and padded keys are masked
  (their attention mask or `key_valid` is zero), so no real position ever reads a padded one.
- Size dims (the image) must equal a bucket's; a size with no bucket is refused, naming the
  buckets there are.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from qiedge.core.buckets import PROMPT_DIMS, SIZE_DIMS, concrete_shape
from qiedge.core.units import PIXELS_PER_TOKEN

RunFunction = Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]


class BucketError(ValueError):
    pass


class BucketedSession:
    def __init__(self, component: str, entry: dict, run_function: RunFunction):
        self.component, self.run_function = component, run_function
        self.functions = entry["functions"]  # name -> dims
        self.inputs = {t["name"]: t for t in entry["inputs"]}
        self.outputs = {t["name"]: t for t in entry["outputs"]}
        self.empty = entry.get("empty_inputs", [])  # inputs every bucket fixes to zero elements

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name in self.empty:
            if name in feeds and np.size(feeds[name]):
                raise BucketError(
                    f"{self.component}: no bucket takes {name} (shape {np.shape(feeds[name])}): "
                    "these packages were exported for text-to-image only"
                )
        feeds = {n: v for n, v in feeds.items() if n in self.inputs}
        batch = self._batch(feeds)
        items = [self._run_one({n: _take(v, self._axis(self.inputs[n]), b) for n, v in feeds.items()}) for b in batch]
        return {
            name: np.concatenate([item[name] for item in items], axis=self._axis(spec))
            if self._axis(spec) is not None
            else items[0][name]
            for name, spec in self.outputs.items()
        }

    @staticmethod
    def _axis(tensor: dict) -> int | None:
        return tensor["shape"].index("batch") if "batch" in tensor["shape"] else None

    def _batch(self, feeds) -> range:
        axes = {n: self._axis(self.inputs[n]) for n in feeds}
        sizes = {v.shape[axes[n]] for n, v in feeds.items() if axes[n] is not None}
        if len(sizes) != 1 or not min(sizes):
            raise ValueError(f"{self.component}: the inputs' batch sizes are {sorted(sizes)}: one, of at least 1")
        return range(sizes.pop())

    def _run_one(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        actual = self._dims(feeds)
        name = self._choose(actual)
        dims = self.functions[name]
        padded = {n: _pad(v, concrete_shape(self.inputs[n]["shape"], dims)) for n, v in feeds.items()}
        out = self.run_function(name, padded)
        return {n: _cut(out[n], concrete_shape(spec["shape"], actual)) for n, spec in self.outputs.items()}

    def _dims(self, feeds) -> dict[str, int]:
        """The symbolic dims these feeds have (batch 1), read off the declared shapes."""
        dims = {"batch": 1}
        for name, value in feeds.items():
            declared = self.inputs[name]["shape"]
            if len(declared) != value.ndim:
                raise ValueError(f"{self.component}: {name} has shape {value.shape}, declared {declared}")
            for symbol, size in zip(declared, value.shape):
                if not isinstance(symbol, str) or symbol == "batch":
                    continue
                factor, _, dim = symbol.rpartition("*")
                count, rest = divmod(size, int(factor or 1))
                if rest or dims.setdefault(dim, count) != count:
                    raise ValueError(f"{self.component}: {name}'s {symbol} ({size}) disagrees with the other inputs")
        return dims

    def _choose(self, actual: dict[str, int]) -> str:
        def fits(dims):
            return all(
                dims[d] == n if d in SIZE_DIMS or d == "cond" else dims[d] >= n
                for d, n in actual.items()
                if d in dims and d != "batch"
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


def _take(value: np.ndarray, axis: int | None, index: int) -> np.ndarray:
    return value if axis is None else np.take(value, [index], axis=axis)


def _pad(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if value.shape == shape:
        return value
    if any(have > want for have, want in zip(value.shape, shape)) or value.ndim != len(shape):
        raise BucketError(f"cannot pad {value.shape} to {shape}")
    return np.pad(value, [(0, want - have) for have, want in zip(value.shape, shape)])


def _cut(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return value[tuple(slice(0, n) for n in shape)]
