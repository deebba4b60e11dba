"""A saved Core ML ML Program (`.mlpackage`) run in NumPy: Core ML's numerics off macOS.

Core ML's own `predict` exists only on macOS. This reads a package back into coremltools' MIL
(pymil) and executes a function's ops in program order, one small NumPy kernel per op type, so
Linux can check a converted package against the reference model.

Numeric model:
- Every value is stored in its MIL dtype, so an fp16 value is exactly fp16-representable, as
  Core ML keeps it between ops.
- Each op reads fp16 inputs widened to fp32, computes in fp32 and rounds its result once, to its
  output's dtype: an fp16 op is fp32 arithmetic with fp16 storage. Ops the converter kept in fp32
  (op selection, `cast` islands) compute and store fp32; int32 and bool stay int32 and bool.
  A device that also rounds inside an op (fp16 accumulation on the Neural Engine or the GPU) can
  differ from this by that internal rounding; this models the op boundaries only.
- Compressed weights (`constexpr_*` ops) are decompressed by coremltools itself, through the
  ops' `materialized_val_inference` (what its own `decompress_weights` uses), once per function.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from qiedge.core.coreml import coremltools

from .coreml_kernels import KERNELS


class UnsupportedOp(RuntimeError):
    """The program uses an op type this interpreter has no kernel for."""


# Constant at load time: `const` values as stored, `constexpr_*` decompressed by coremltools.
_DECOMPRESSED = frozenset(
    {
        "constexpr_affine_dequantize",
        "constexpr_blockwise_shift_scale",
        "constexpr_lut_to_dense",
        "constexpr_lut_to_sparse",
        "constexpr_sparse_blockwise_shift_scale",
        "constexpr_sparse_to_dense",
    }
)
_CONSTANT = _DECOMPRESSED | {"const"}
SUPPORTED: frozenset[str] = frozenset(KERNELS) | _CONSTANT


def _widen(value):
    """fp16 enters every op as fp32: the op computes in fp32 and rounds only its output."""
    if isinstance(value, (np.ndarray, np.generic)) and value.dtype == np.float16:
        return value.astype(np.float32)
    return value


@dataclass(frozen=True)
class _Step:
    kernel: Callable[..., Any]
    args: dict[str, str | tuple[str, ...]]  # op input -> the var name(s) holding it
    outputs: tuple[tuple[str, np.dtype], ...]
    release: tuple[str, ...]  # values no later step reads: dropped so memory stays bounded


@dataclass(frozen=True)
class _Plan:
    constants: dict[str, Any]  # const and decompressed constexpr values, fp16 widened once
    steps: tuple[_Step, ...]
    outputs: tuple[tuple[str, np.dtype], ...]


def _dtype(var) -> np.dtype:
    return np.dtype(coremltools().converters.mil.mil.types.nptype_from_builtin(var.dtype))


def _constant_values(op) -> tuple:
    if op.op_type == "const":
        return (op.outputs[0].val,)
    values = op.materialized_val_inference()
    return values if isinstance(values, tuple) else (values,)


def _names(ref: str | tuple[str, ...]) -> tuple[str, ...]:
    return (ref,) if isinstance(ref, str) else ref


def _plan(function_name: str, function) -> _Plan:
    unsupported = {op.op_type: op.name for op in function.operations if op.op_type not in SUPPORTED}
    if unsupported:
        named = ", ".join(f"{kind} (op {name!r})" for kind, name in unsupported.items())
        raise UnsupportedOp(f"function {function_name!r} uses ops the NumPy interpreter cannot run: {named}")
    constants, ops = {}, []
    for op in function.operations:
        if op.op_type in _CONSTANT:
            constants.update((v.name, _widen(val)) for v, val in zip(op.outputs, _constant_values(op)))
        else:
            ops.append(op)
    args = [
        {k: tuple(x.name for x in v) if isinstance(v, (list, tuple)) else v.name for k, v in op.inputs.items()}
        for op in ops
    ]
    # Walking backwards, each op is the last reader of the names no later op (nor the output) reads.
    later, releases = {v.name for v in function.outputs}, []
    for reads in reversed(args):
        names = {name for ref in reads.values() for name in _names(ref)}
        releases.append(tuple(names - later))
        later |= names
    steps = (
        _Step(KERNELS[op.op_type], reads, tuple((v.name, _dtype(v)) for v in op.outputs), release)
        for op, reads, release in zip(ops, args, reversed(releases))
    )
    return _Plan(constants, tuple(steps), tuple((v.name, _dtype(v)) for v in function.outputs))


def _read(values: dict, ref: str | tuple[str, ...]):
    return _widen(values[ref]) if isinstance(ref, str) else [_widen(values[name]) for name in ref]


class Program:
    """A loaded ML Program; `run` executes one function on NumPy feeds."""

    def __init__(self, program):  # a pymil Program
        self._program = program
        self._plans: dict[str, _Plan] = {}

    @classmethod
    def load(cls, package: str | Path) -> Program:
        """Reads the package's spec and weight blobs back into pymil, as coremltools' own passes do."""
        ct = coremltools()
        model = ct.models.MLModel(str(package), skip_model_load=True)
        spec = model.get_spec()
        milproto = ct.converters.mil.frontend.milproto.load
        return cls(milproto.load(spec, spec.specificationVersion, model.weights_dir))

    @property
    def functions(self) -> tuple[str, ...]:
        return tuple(self._program.functions)

    def _function(self, function: str):
        if function not in self._program.functions:
            raise ValueError(f"no function {function!r}; the package has {', '.join(self.functions)}")
        return self._program.functions[function]

    def inputs(self, function: str) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        """Declared dtype and shape per input; -1 marks a flexible dimension."""
        return {
            name: (_dtype(var), tuple(int(d) if isinstance(d, (int, np.integer)) else -1 for d in var.shape))
            for name, var in self._function(function).inputs.items()
        }

    def outputs(self, function: str) -> list[str]:
        return [var.name for var in self._function(function).outputs]

    def _feeds(self, function: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        declared = self.inputs(function)
        problems = [f"unexpected input {name!r}" for name in feeds if name not in declared]
        for name, (_, shape) in declared.items():
            if name not in feeds:
                problems.append(f"missing input {name!r}")
            elif len(got := np.shape(feeds[name])) != len(shape) or any(d not in (-1, g) for d, g in zip(shape, got)):
                problems.append(f"input {name!r} has shape {got}, the program wants {shape}")
        if problems:
            raise ValueError(f"function {function!r}: {'; '.join(problems)}")
        return {name: np.asarray(feeds[name]).astype(dtype, copy=False) for name, (dtype, _) in declared.items()}

    def run(self, function: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name, in the program's output dtypes (fp16 outputs stay fp16)."""
        if function not in self._plans:
            self._plans[function] = _plan(function, self._function(function))
        plan = self._plans[function]
        values = {**plan.constants, **self._feeds(function, feeds)}
        with np.errstate(all="ignore"):  # Core ML overflows to inf and divides by zero silently
            for step in plan.steps:
                result = step.kernel(**{name: _read(values, ref) for name, ref in step.args.items()})
                for (name, dtype), value in zip(step.outputs, result if len(step.outputs) > 1 else (result,)):
                    values[name] = np.asarray(value).astype(dtype, copy=False)
                for name in step.release:
                    del values[name]
        return {name: np.asarray(values[name]).astype(dtype, copy=False) for name, dtype in plan.outputs}
