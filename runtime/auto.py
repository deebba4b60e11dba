"""`--backend auto`: the `cuda` backend where an NVIDIA GPU is visible; else, for the CPU at
hand, the fastest torch path that keeps the image.

Measured (`bench/e2e.py`, `small` preset, 2 cores): bf16 autocast compiled by inductor is 5.1x
faster than eager fp32 where AMX multiplies bf16, and 2.4x *slower* on an AVX-512 Xeon without
AMX or AVX512-BF16, where bf16 is converted to fp32 and back (its first call, compiling, took
190 s). So bf16 only where a unit multiplies it natively; elsewhere compiled fp32. Compiling costs
tens of seconds, so a job too small to win that back runs eager.
"""

from __future__ import annotations

from dataclasses import dataclass

from .backends import REGISTRY
from .hardware import Cpu

BACKENDS = ("auto", *REGISTRY)

# Below this many transformer FLOPs a job runs in a few seconds eager on two cores, less than
# inductor takes to compile (the tiny and demo models at any size; `small` at 512 px is 1e12).
COMPILE_PAYS_OFF_FLOP = 2e11


@dataclass(frozen=True)
class Choice:
    backend: str
    reason: str


def transformer_flop(parameters: int, image_tokens: int, steps: int, images: int) -> float:
    """Multiply-adds of the denoising loop, counted twice: 2 * parameters * tokens per step."""
    return 2.0 * parameters * image_tokens * steps * images


def choose(cpu: Cpu, flop: float, gpu: str | None = None) -> Choice:
    if gpu:
        return Choice("cuda", f"{gpu} is visible")
    if flop < COMPILE_PAYS_OFF_FLOP:
        return Choice("torch", f"a {flop / 1e9:.0f} GFLOP job: compiling would take longer than it saves")
    if cpu.bf16_unit:
        return Choice("torch-bf16", f"{cpu.bf16_unit} multiplies bf16 natively")
    return Choice("torch-compile", "bf16 is emulated on this CPU (no AMX or AVX512-BF16): compiled fp32")


def visible_gpu() -> str | None:
    """The CUDA GPU torch sees, by name, if the cuda backend can run on it (bf16: Ampere or
    newer); None otherwise (or without torch)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0):
        return None
    return torch.cuda.get_device_name()


def bf16_warning(cpu: Cpu) -> str | None:
    """What forcing torch-bf16 costs where bf16 is emulated; None where it is native."""
    if cpu.bf16_unit:
        return None
    return (
        "torch-bf16 on a CPU without native bf16 (no AMX, AVX512-BF16 or Arm BF16): measured 2.4x slower "
        "than fp32 on such a CPU, and its first call compiles for minutes; torch-compile is the fast path here"
    )
