"""Where a backend's arrays live, and the two crossings between there and the host.

The sampler keeps latents, velocities and the prefix's K/V in the backend's own arrays and does
its arithmetic (Euler update, CFG mix, clipping) with operators that NumPy arrays and torch
tensors share, so a GPU backend's data never leaves the device between the noise going in and the
image coming out. CPU backends work on NumPy arrays, where both crossings are no-ops.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class Arrays(Protocol):
    def put(self, value: np.ndarray) -> Any: ...  # host -> the backend's array

    def get(self, value: Any) -> np.ndarray: ...  # the backend's array -> host

    def finite(self, value: Any) -> bool: ...  # no NaN or Inf in it (computed where it lives)

    def concat(self, values: list, axis: int) -> Any: ...  # joined along `axis`, where they live


class HostArrays:
    def put(self, value: np.ndarray) -> np.ndarray:
        return value

    def get(self, value) -> np.ndarray:
        return np.asarray(value)

    def finite(self, value) -> bool:
        array = np.asarray(value)
        return not np.issubdtype(array.dtype, np.inexact) or bool(np.isfinite(array).all())

    def concat(self, values: list, axis: int) -> np.ndarray:
        return np.concatenate(values, axis=axis)


HOST = HostArrays()
