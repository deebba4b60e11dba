"""One graph into one ML Program function: the wrapper with its weights streamed in, exported
with `torch.export` at one bucket's shapes, converted by coremltools, with the interface Core ML
takes (int32 indices and masks; no zero-sized inputs)."""

from __future__ import annotations

import numpy as np
import torch
from qiedge.core.contract import FLOAT
from qiedge.core.coreml import coreml_dtype, coremltools, numpy_dtype

from . import coreml_attention, coreml_fp16, coreml_ops
from .specs import ComponentSpec, ModelConfigs, describe, trace_inputs, trace_size
from .stages import ExportError


class CoreMLInterface(torch.nn.Module):
    """The graph as Core ML calls it: index and mask inputs arrive as int32 (Core ML has neither
    int64 nor bool inputs) and are widened or compared inside; an input every bucket fixes empty
    (the condition latents: no bucket has condition images) is no input at all, since a
    zero-sized array is not something to hand Core ML, and is made empty inside."""

    def __init__(self, graph: torch.nn.Module, spec: ComponentSpec, empty: dict[str, tuple[int, ...]]):
        super().__init__()
        self.wrapped, self.spec, self.empty = graph, spec, empty

    def forward(self, *args):
        widen = {"bool": lambda v: v != 0, "int64": lambda v: v.long()}
        given = iter(args)
        inputs = [
            torch.zeros(self.empty[t.name]) if t.name in self.empty else widen.get(t.dtype, lambda v: v)(next(given))
            for t in self.spec.inputs
        ]
        return self.wrapped(*inputs)


def empty_inputs(spec: ComponentSpec, configs: ModelConfigs, dims: dict) -> dict[str, tuple[int, ...]]:
    """The inputs a bucket fixes to zero elements, with their shapes."""
    shapes = {t.name: tuple(trace_size(d, configs, dims) for d in t.shape) for t in spec.inputs}
    return {name: shape for name, shape in shapes.items() if 0 in shape}


def interface(spec: ComponentSpec, configs: ModelConfigs, precision: str, empty) -> dict:
    """The manifest's inputs and outputs as Core ML takes and returns them (int32 indices and masks)."""

    def tensors(specs):
        described = describe(specs, configs, precision)
        return [t | {"dtype": coreml_dtype(t["dtype"])} for t in described if t["name"] not in empty]

    return {"inputs": tensors(spec.inputs), "outputs": tensors(spec.outputs), "empty_inputs": sorted(empty)}


def _numpy_dtype(dtype: str, precision: str):
    """The NumPy dtype Core ML sees for a contract dtype ('float' follows the precision)."""
    return numpy_dtype(precision if dtype == FLOAT else dtype)


def load_module(spec: ComponentSpec, configs: ModelConfigs, source, extras: dict) -> torch.nn.Module:
    """The spec's wrapper with every parameter and buffer streamed in from the source (or the
    config's constants), built on the meta device first so nothing is allocated twice."""
    with torch.device("meta"):
        module = spec.build(configs).eval()
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if not tensor.is_meta:
            continue
        key = name.removeprefix(spec.key_prefix)
        if key in extras:
            value = torch.from_numpy(np.asarray(extras[key])).reshape(tensor.shape)
        elif key in source:
            value = torch.from_numpy(source.get(key, torch.float32))
        else:
            raise ExportError(f"{spec.name}: weight {name} has no source (checkpoint key {key})")
        owner, _, leaf = name.rpartition(".")
        parent = module.get_submodule(owner)
        if isinstance(tensor, torch.nn.Parameter):
            setattr(parent, leaf, torch.nn.Parameter(value, requires_grad=False))
        else:
            parent._buffers[leaf] = value
    return module


def tables_in_fp16(module: torch.nn.Module) -> None:
    """Embedding tables stored as fp16 before conversion. A lookup does no arithmetic, so this is
    what fp16 compute makes of them anyway; but coremltools' fp16 cast pass holds several
    fp32-sized copies of a constant while it casts it: converting the 7B encoder's first chunk
    (Qwen3-VL's 622M-entry table and two layers) peaked at 22.9 GB, and at 8.4 GB with the table
    already fp16 (measured)."""
    for m in module.modules():
        if isinstance(m, torch.nn.Embedding):
            m.half()


def convert(module, spec: ComponentSpec, configs: ModelConfigs, dims: dict, precision: str, target):
    """One function: the module exported at one bucket's shapes and converted to an ML Program
    (`target`: the CoreMLOptions it is for)."""
    ct = coremltools()
    empty = empty_inputs(spec, configs, dims)
    example = trace_inputs(spec, configs, torch.float32, sizes=dims)
    given = [t for t in spec.inputs if t.name not in empty]
    args = tuple(v.int() if v.dtype in (torch.int64, torch.bool) else v for v in (example[t.name] for t in given))
    with torch.no_grad(), coreml_attention.layout(target.attention):
        graph = CoreMLInterface(module, spec, empty)
        program = torch.export.export(graph, args, strict=False).run_decompositions({})
    inputs = [
        ct.TensorType(name=t.name, shape=tuple(a.shape), dtype=_numpy_dtype(t.dtype, precision))
        for t, a in zip(given, args)
    ]
    outputs = [ct.TensorType(name=t.name, dtype=_numpy_dtype(t.dtype, precision)) for t in spec.outputs]
    with coreml_ops.converters():
        return ct.convert(
            program,
            convert_to="mlprogram",
            inputs=inputs,
            outputs=outputs,
            minimum_deployment_target=getattr(ct.target, target.deployment_target),
            compute_precision=coreml_fp16.compute_precision(precision, spec.weights),
            compute_units=getattr(ct.ComputeUnit, target.compute_units.upper()),
            skip_model_load=True,
        )
