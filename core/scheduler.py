"""Flow-matching Euler sampling schedule, in NumPy so the torch-free runtime shares it.

Reproduces diffusers' `FlowMatchEulerDiscreteScheduler.set_timesteps` with dynamic shifting
(exponential time shift by `mu`, which grows with the image's token count), the terminal
stretch, and float32 arithmetic throughout, so sigmas match diffusers bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SchedulerConfig:
    """The released `scheduler/scheduler_config.json` values."""

    base_image_seq_len: int = 256
    max_image_seq_len: int = 8192
    base_shift: float = 0.5
    max_shift: float = 0.9
    num_train_timesteps: int = 1000
    shift: float = 1.0
    shift_terminal: float | None = 0.02
    time_shift_type: str = "exponential"
    use_dynamic_shifting: bool = True

    def __post_init__(self):
        if not self.use_dynamic_shifting or self.time_shift_type != "exponential":
            raise ValueError("only dynamic exponential time shifting is supported")

    def mu(self, num_tokens: int) -> float:
        slope = (self.max_shift - self.base_shift) / (self.max_image_seq_len - self.base_image_seq_len)
        return num_tokens * slope + (self.base_shift - slope * self.base_image_seq_len)


def sigma_schedule(
    config: SchedulerConfig, num_tokens: int, steps: int | None = None, sample_sigmas: tuple[float, ...] | None = None
) -> np.ndarray:
    """[N + 1] float32 sigmas from 1 down to 0, for N steps over an image of `num_tokens` tokens.

    `sample_sigmas` is a distilled checkpoint's fixed grid; without it, `steps` evenly spaced.
    """
    if sample_sigmas is not None:
        sigmas = np.asarray(sample_sigmas, dtype=np.float32)
    elif steps is not None and steps >= 1:
        sigmas = np.linspace(1.0, 1 / steps, steps).astype(np.float32)
    else:
        raise ValueError(f"need a number of steps >= 1 or a sigma grid, got steps={steps}")
    shift = np.float32(math.exp(config.mu(num_tokens)))
    with np.errstate(divide="ignore"):
        sigmas = shift / (shift + (np.float32(1) / sigmas - np.float32(1)))
    if config.shift_terminal:
        one_minus = np.float32(1) - sigmas
        scale = one_minus[-1] / np.float32(1 - config.shift_terminal)
        sigmas = np.float32(1) - one_minus / scale
    return np.append(sigmas, np.float32(0)).astype(np.float32)


def model_timesteps(sigmas: np.ndarray) -> np.ndarray:
    """The value the transformer is fed at each step: diffusers passes (sigma * 1000) / 1000,
    each rounded to float32, which is not always sigma itself."""
    return (sigmas[:-1] * np.float32(1000)) / np.float32(1000)
