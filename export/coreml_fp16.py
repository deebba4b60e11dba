"""Which ops a Core ML package keeps in fp32 when it computes in fp16, and the measurements
behind the choice.

fp16 holds magnitudes up to 65504 with 11 significant bits. Three rules, applied by coremltools'
`FP16ComputePrecision(op_selector)`:
- norm statistics (`pow`, `reduce_mean`, `rsqrt`) always: a square overflows once |x| > 256, and
  language-model hidden states reach thousands;
- angles: sin, cos and the ops that compute what they read (timestep embeddings and the encoder's
  RoPE reach 1000-8192 rad, where fp16's spacing is 0.5-8 rad);
- measured: `bench/coreml_fp16_ranges.py` runs the reference on real trajectories of the demo
  checkpoint and at the 7B dimensions (stand-in weights, several prompts and sizes), records the
  largest |value| every op produces (and, for softmax and the norms, reads) with
  `ActivationRanges`, and writes `coreml_fp16_ranges.json` beside this module; an op type whose
  maximum comes within `MARGIN` of fp16's limit stays fp32 in that model family's packages.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from qiedge.core.coreml import coremltools

FP16_MAX = 65504.0
MARGIN = 4.0  # real checkpoints may run hotter than stand-in weights: keep this much headroom
RANGES = Path(__file__).with_name("coreml_fp16_ranges.json")

# aten op -> the ML Program op type it converts to (for the ops whose range matters).
MIL_OPS = {
    "pow": "pow",
    "mean": "reduce_mean",
    "rsqrt": "rsqrt",
    "sin": "sin",
    "cos": "cos",
    "exp": "exp",
    "_softmax": "softmax",
    "native_layer_norm": "layer_norm",
    "linalg_vector_norm": "reduce_l2_norm",  # the VAE's RMS norm (F.normalize)
    "mul": "mul",
    "add": "add",
    "mm": "linear",
    "addmm": "linear",
    "bmm": "matmul",
    "convolution": "conv",
    "silu": "silu",
    "tanh": "tanh",
}
# Ops that read their input at a wider range than they return (statistics, exponentials, angles).
READS_INPUT = ("_softmax", "native_layer_norm", "sin", "cos")
ANGLE_OPS = ("sin", "cos")
NORM_STATISTICS = {
    "pow": "x^2 of RMSNorm overflows fp16 once |x| > 256",
    "reduce_mean": "RMSNorm's mean of squares",
    "rsqrt": "RMSNorm's 1 / sqrt(mean + eps)",
}
ANGLE_DEPTH = 6  # how far down an op's consumers a sin or cos may be for it to compute an angle


class ActivationRanges:
    """A torch dispatch mode that records, per aten op, the largest |value| it produced (and read,
    for READS_INPUT ops), over every call while active."""

    def __init__(self):
        self.maxima: dict[str, float] = {}

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        ranges = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                name = func.overloadpacket.__name__
                if name in MIL_OPS:
                    ranges._note(name, out)
                    if name in READS_INPUT:
                        ranges._note(f"{name} input", args[0])
                return out

        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)

    def _note(self, name: str, value) -> None:
        import torch

        tensors = value if isinstance(value, (tuple, list)) else (value,)
        for t in tensors:
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel():
                magnitude = t.detach().abs()
                # Masked attention scores hold the lowest finite fp16 exactly, on purpose (softmax
                # subtracts the row's max): every other value counts, overflow included.
                magnitude = magnitude[magnitude != FP16_MAX]
                peak = float(magnitude.max()) if magnitude.numel() else 0.0
                self.maxima[name] = max(self.maxima.get(name, 0.0), peak)
                return  # the first output is the op's result (the others are saved statistics)


def risky(maxima: dict[str, float]) -> dict[str, float]:
    """MIL op type -> the measured maximum, for the ops whose range comes within MARGIN of fp16's."""
    kept = {}
    for name, peak in maxima.items():
        if peak * MARGIN >= FP16_MAX:
            op = MIL_OPS[name.removesuffix(" input")]
            kept[op] = max(kept.get(op, 0.0), peak)
    return kept


def measured() -> dict:
    """The shipped measurements: {"sources": [...], "maxima": {"<source> <family>": {aten op: max}}}."""
    return json.loads(RANGES.read_text())


def fp32_ops(family: str) -> dict[str, dict]:
    """MIL op type -> why it stays fp32 in a model family's packages ("transformer", "vae",
    "text_encoder": the checkpoint folder), with the largest |value| measured for it."""
    maxima = {}
    for source, values in measured()["maxima"].items():
        if source.rpartition(" ")[2] == family:
            for op, peak in values.items():
                maxima[op] = max(maxima.get(op, 0.0), peak)
    kept = {op: {"why": why} for op, why in NORM_STATISTICS.items()}
    angle = "an angle (and the ops computing it): fp16's spacing is 0.5 rad at 1000 rad"
    kept.update({op: {"why": angle} for op in ANGLE_OPS})
    for op in risky(maxima):
        kept[op] = {"why": f"measured within {MARGIN:g}x of fp16's limit"}
    for name, peak in maxima.items():
        op = MIL_OPS[name.removesuffix(" input")]
        if op in kept:
            kept[op]["max"] = max(kept[op].get("max", 0.0), float(np.float32(peak)))
    return dict(sorted(kept.items()))


def _computes_angle(op, depth: int = ANGLE_DEPTH) -> bool:
    """Whether a sin or cos reads this op's result within `depth` ops."""
    if op.op_type in ANGLE_OPS:
        return True
    return depth > 0 and any(_computes_angle(child, depth - 1) for out in op.outputs for child in out.child_ops)


def _keep_fp16(op, kept: frozenset[str]) -> bool:
    return op.op_type not in kept and not _computes_angle(op)


def compute_precision(precision: str, family: str):
    ct = coremltools()
    if precision == "fp32":
        return ct.precision.FLOAT32
    kept = frozenset(fp32_ops(family))
    return ct.transform.FP16ComputePrecision(op_selector=lambda op: _keep_fp16(op, kept))


def record(precision: str, family: str) -> dict | None:
    """For the manifest: the op types kept in fp32, why, and the largest |value| measured."""
    return fp32_ops(family) if precision == "fp16" else None
