"""Where exported weights come from, one tensor at a time: a model directory's safetensors, or
deterministic random values for a preset exported without a checkpoint. Nothing here holds more
than one tensor, which is what lets a 7B model export on a 24 GB machine."""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
import torch
from qiedge.reference_model.weights import open_weights, weight_files


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """NumPy has no bfloat16: bf16 tensors come back as ml_dtypes' (which ONNX writes as BFLOAT16)."""
    if tensor.dtype == torch.bfloat16:
        import ml_dtypes

        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


class CheckpointSource:
    def __init__(self, folder: Path):
        self.files = {}
        for path in weight_files(folder):
            with open_weights(path) as f:
                self.files.update({key: path for key in f.keys()})

    def __contains__(self, key: str) -> bool:
        return key in self.files

    def get(self, key: str, dtype: torch.dtype) -> np.ndarray:
        with open_weights(self.files[key]) as f:
            return as_numpy(f.get_tensor(key).to(dtype))


CHUNK = 1 << 24  # elements


class RandomSource:
    """Deterministic stand-in weights: each tensor seeded by its name, scaled 1/sqrt(fan_in),
    norm weights near one, so a graph exported without a checkpoint still computes sane values."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], seed: int = 0):
        self.shapes, self.seed = shapes, seed

    def __contains__(self, key: str) -> bool:
        return key in self.shapes

    def get(self, key: str, dtype: torch.dtype) -> np.ndarray:
        shape = self.shapes[key]
        generator = torch.Generator().manual_seed(self.seed * 2**32 + zlib.crc32(key.encode()))
        out = torch.empty(shape, dtype=dtype)
        if len(shape) == 1:
            return as_numpy(out.copy_(1 + 0.1 * torch.randn(shape, generator=generator)))
        # Filled a block of rows at a time, so the fp32 draw never doubles a large tensor's memory.
        scale = 1 / math.prod(shape[1:]) ** 0.5
        rows = max(1, CHUNK // math.prod(shape[1:]))
        for start in range(0, shape[0], rows):
            block = out[start : start + rows]
            block.copy_(torch.randn(block.shape, generator=generator).mul_(scale))
        return as_numpy(out)
