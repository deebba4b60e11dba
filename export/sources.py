"""Where exported weights come from, one tensor at a time: a model directory's safetensors, or
deterministic random values for a preset exported without a checkpoint. Nothing here holds more
than one tensor, which is what lets a 7B model export on a 24 GB machine."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from qiedge.reference_model.weights import weight_files


class CheckpointSource:
    def __init__(self, folder: Path):
        self.files = {}
        for path in weight_files(folder):
            with safe_open(path, framework="pt") as f:
                self.files.update({key: path for key in f.keys()})

    def __contains__(self, key: str) -> bool:
        return key in self.files

    def get(self, key: str, dtype: torch.dtype) -> np.ndarray:
        with safe_open(self.files[key], framework="pt") as f:
            return f.get_tensor(key).to(dtype).numpy()


class RandomSource:
    """Deterministic stand-in weights: each tensor seeded by its name, scaled 1/sqrt(fan_in),
    norm weights near one, so a graph exported without a checkpoint still computes sane values."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], seed: int = 0):
        self.shapes, self.seed = shapes, seed

    def __contains__(self, key: str) -> bool:
        return key in self.shapes

    def get(self, key: str, dtype: torch.dtype) -> np.ndarray:
        shape = self.shapes[key]
        rng = np.random.default_rng([self.seed, zlib.crc32(key.encode())])
        if len(shape) == 1:
            value = 1 + 0.1 * rng.standard_normal(shape, dtype=np.float32)
        else:
            value = rng.standard_normal(shape, dtype=np.float32) / np.sqrt(np.prod(shape[1:]))
        return torch.from_numpy(value).to(dtype).numpy()
