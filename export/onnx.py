"""The ONNX target: one mechanism for every component spec.

Stages, each checked before the next (export/stages.py runs them):
1. trace the wrapper on the meta device with torch's dynamo exporter (no weights in memory);
   the graph's inputs and outputs must be the spec's;
2. bind weights: stream each initializer from its source into the folder's shared external-data
   file (graphs of one folder, e.g. the transformer's prefix, step and one-shot graphs, share
   it), folding weight transposes into the stored layout on the way; none may stay unbound;
3. optimize the graph structure (onnxscript; weights are never loaded for it), then the passes
   from outside (a quantized export's Q/DQ insertion, quantization/onnx_qdq.py);
4. rewrite into ONNX Runtime's fused operators for the provider `--optimize` names
   (export/onnx_fusions.py; the TensorRT target, which reads these graphs too, skips it);
5. save, then `onnx.checker` and shape inference on the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import onnx_fusions, trace_cache
from .specs import ComponentSpec, ModelConfigs, declared_shape, dynamic_shapes, trace_inputs
from .stages import ExportError, GraphJob, Stage, configure

# Opset 18: torch's dynamo exporter targets it natively, and both ONNX Runtime and TensorRT 10's
# ONNX parser read it.
OPSET = 18
WEIGHTS_FILE = "weights.bin"
ALIGNMENT = 64


@dataclass
class WeightStore:
    """An append-only external-data file; a tensor already written (same key, same layout) is
    reused, so graphs that share a folder share their weights."""

    folder: Path
    offsets: dict[tuple[str, bool], tuple[int, int, np.dtype]] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.folder / WEIGHTS_FILE

    def add(self, key: str, transposed: bool, make) -> tuple[int, int, np.dtype]:
        """(offset, length, dtype) of the tensor `make()` returns, written once per (key, layout)."""
        if (key, transposed) not in self.offsets:
            array = np.ascontiguousarray(make())
            data = _packed_int4(array) if array.dtype.name == "int4" else array.tobytes()
            with open(self.path, "ab") as f:
                offset = f.seek(0, os.SEEK_END)
                pad = -offset % ALIGNMENT
                f.write(b"\0" * pad)
                f.write(data)
            self.offsets[(key, transposed)] = (offset + pad, len(data), array.dtype)
        return self.offsets[(key, transposed)]


def _packed_int4(array: np.ndarray) -> bytes:
    """ONNX's INT4 layout: two values a byte, the first in the low nibble."""
    nibbles = (array.astype(np.int8).ravel() & 0xF).astype(np.uint8)
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    return (nibbles[0::2] | (nibbles[1::2] << 4)).tobytes()


def trace(spec: ComponentSpec, configs: ModelConfigs, precision: torch.dtype):
    """Stage 1: the wrapper traced on the meta device into an onnx_ir model (initializers without
    data). The trace goes through its serialized form whether or not the trace cache
    (export/trace_cache.py) had it, so an export is the same file either way."""
    with torch.device("meta"):
        module = spec.build(configs).to(device="meta", dtype=precision).eval()
    key = trace_key(spec, configs, precision, module)
    return trace_cache.cached(key, lambda: trace_cache.dumps(_traced(module, spec, configs, precision)))


def trace_key(spec: ComponentSpec, configs: ModelConfigs, precision: torch.dtype, module: torch.nn.Module) -> str:
    """What a trace depends on besides the code: the config its component is built from, its
    interface with the config's dims resolved, the wrapper's modules and their tensors' shapes
    (which say, e.g., which blocks a chunk keeps), the precision. The other components' configs
    are left out, so a transformer exported from a preset and from a model directory of that
    architecture share a trace."""
    config = {"text_encoder": configs.encoder, "transformer": configs.transformer, "vae": configs.vae}[spec.weights]
    interface = [(t.name, t.dtype, declared_shape(t, configs)) for t in (*spec.inputs, *spec.outputs)]
    tensors = [(name, tuple(t.shape), t.dtype) for name, t in (*module.named_parameters(), *module.named_buffers())]
    return trace_cache.key(OPSET, spec.name, interface, str(module), tensors, config, precision)


def _traced(module, spec: ComponentSpec, configs: ModelConfigs, precision: torch.dtype):
    import warnings

    inputs = trace_inputs(spec, configs, precision, device="meta")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (),
            kwargs=inputs,
            dynamic_shapes=dynamic_shapes(spec, configs),
            dynamo=True,
            opset_version=OPSET,
            optimize=False,
            output_names=[o.name for o in spec.outputs],
            verbose=False,
        )
    if program is None:
        raise ExportError(f"{spec.name}: the exporter returned nothing")
    return program.model


def bind_weights(
    model, spec: ComponentSpec, source, store: WeightStore, precision: torch.dtype, extras: dict, transform=None
) -> int:
    """Stage 2: point every initializer at the external-data file; returns the bytes bound.

    `transform(key)` may return a function that replaces that weight (given in fp32) by another,
    a quantized one in its own dtype; it sees and returns the checkpoint's [out, in] layout.
    """
    import onnx_ir as ir

    bound = 0
    for name, value in list(model.graph.initializers.items()):
        key = name.removeprefix(spec.key_prefix)
        if key not in extras and key not in source:
            raise ExportError(f"{spec.name}: graph weight {name} has no source (checkpoint key {key})")
        make = _weight_maker(key, value.dtype.numpy(), source, extras, transform, precision)
        transposes = [u.node for u in value.uses()]
        transposed = bool(transposes) and len(value.shape) == 2 and all(_is_matrix_transpose(n) for n in transposes)
        if transposed:
            for node in transposes:
                node.outputs[0].replace_all_uses_with(value)
                model.graph.remove(node, safe=True)
            shape = ir.Shape(list(value.shape)[::-1])
            offset, length, dtype = store.add(key, True, lambda make=make: make().T)
        else:
            shape = ir.Shape(list(value.shape))
            offset, length, dtype = store.add(key, False, make)
        value.shape = shape
        value.dtype = ir.DataType.from_numpy(dtype)
        value.const_value = ir.ExternalTensor(
            WEIGHTS_FILE, offset, length, value.dtype, shape=shape, name=name, base_dir=str(store.folder)
        )
        bound += length
    return bound


def _weight_maker(key: str, dtype, source, extras: dict, transform, precision: torch.dtype):
    """A function of no arguments that reads (and maybe quantizes) one weight when called."""
    if key in extras:
        return lambda: extras[key].astype(dtype)
    replace = transform(key) if transform is not None else None
    if replace is None:
        return lambda: source.get(key, precision)
    return lambda: replace(source.get(key, torch.float32))


def _is_matrix_transpose(node) -> bool:
    perm = node.attributes.get("perm")
    return node.op_type == "Transpose" and perm is not None and list(perm.as_ints()) == [1, 0]


def optimize(model) -> None:
    """Stage 3: fold shape arithmetic and sequence ops; size limits keep weights untouched."""
    import onnxscript.optimizer

    onnxscript.optimizer.optimize(model)


def save_and_check(model, path: Path, spec: ComponentSpec, configs: ModelConfigs) -> None:
    """Stage 4: write the graph, check it and run shape inference on the file."""
    import onnx
    import onnx_ir as ir

    _name_dims(model, spec, configs)
    ir.save(model, path)
    try:
        onnx.checker.check_model(str(path), full_check=False)
        onnx.shape_inference.infer_shapes_path(str(path), str(path.with_suffix(".inferred.onnx")), check_type=True)
    except Exception as e:
        raise ExportError(f"{spec.name}: {path.name} fails the ONNX checker: {e}") from e
    finally:
        path.with_suffix(".inferred.onnx").unlink(missing_ok=True)


def _name_dims(model, spec: ComponentSpec, configs: ModelConfigs) -> None:
    """Give every graph input and output the spec's symbolic dims, so the file documents itself."""
    import onnx_ir as ir

    declared = {t.name: declared_shape(t, configs) for t in (*spec.inputs, *spec.outputs)}
    for value in (*model.graph.inputs, *model.graph.outputs):
        if value.name in declared:
            value.shape = ir.Shape(declared[value.name])


def _trace(job: GraphJob) -> None:
    job.graph = trace(job.spec, job.configs, job.precision)


def _check_interface(job: GraphJob) -> None:
    """The traced graph takes and returns exactly what the spec declares."""
    graph = job.graph.graph
    declared = ([t.name for t in job.spec.inputs], [t.name for t in job.spec.outputs])
    if ([v.name for v in graph.inputs], [v.name for v in graph.outputs]) != declared:
        raise ExportError(f"{job.spec.name}: traced inputs/outputs differ from the spec's {declared}")


def _bind(job: GraphJob) -> None:
    store = job.shared.setdefault("weights", WeightStore(job.folder))
    job.folder.mkdir(exist_ok=True)
    bind_weights(job.graph, job.spec, job.source, store, job.precision, job.extras, transform=job.weight_transform)


def _check_bound(job: GraphJob) -> None:
    unbound = [name for name, value in job.graph.graph.initializers.items() if value.const_value is None]
    if unbound:
        raise ExportError(f"{job.spec.name}: weights without data: {', '.join(unbound[:5])}")


def _optimize(job: GraphJob) -> None:
    optimize(job.graph)


def _save(job: GraphJob) -> None:
    job.path = job.folder / f"{job.spec.stem}.onnx"
    save_and_check(job.graph, job.path, job.spec, job.configs)


SAVE = Stage("save and check", _save)


def build_stages(passes) -> list[Stage]:
    """Every stage before the save, ONNX Runtime's fusions excepted: what the graph targets share.
    Passes (Q/DQ insertion) run after the graph is optimized, which would otherwise fold small
    dequantized weights back into floats."""
    return [
        Stage("trace", _trace, _check_interface),
        Stage("bind weights", _bind, _check_bound),
        Stage("optimize", _optimize),
        *passes,
    ]


@dataclass(frozen=True)
class OnnxOptions:
    optimize: str = "cpu"  # ONNX Runtime's provider whose fused operators the graphs use, or none

    def check(self) -> None:
        if self.optimize not in onnx_fusions.LEVELS:
            raise ValueError(f"--optimize {self.optimize!r}: choose from {', '.join(onnx_fusions.LEVELS)}")


class OnnxTarget:
    """ONNX graphs with external weights, shared by the graphs of one folder, rewritten into ONNX
    Runtime's fused operators unless `--optimize none`."""

    name = "onnx"
    tools = ("torch", "onnx", "onnxscript", "onnxruntime", "transformers")
    default_precision = "fp32"
    precisions = ("fp32", "fp16")
    components = None
    unsupported: dict[str, str] = {}

    def __init__(self, options: OnnxOptions = OnnxOptions()):
        self.options = options

    def configured(self, **options) -> OnnxTarget:
        return OnnxTarget(configure(self.name, self.options, options))

    def prepare(self, configs, components, precision, shared) -> None:
        pass

    def stages(self, passes) -> list[Stage]:
        return [*build_stages(passes), Stage("fuse for onnxruntime", self._fuse), SAVE]

    def _fuse(self, job: GraphJob) -> None:
        job.shared.setdefault("fused", {})[job.spec.name] = onnx_fusions.fuse(job.graph, self.options.optimize)

    def entry(self, job: GraphJob) -> dict:
        fused = job.shared["fused"][job.spec.name]
        return {"opset": OPSET, "optimization": {"level": self.options.optimize, "fused": fused}}

    def files(self, root: Path, entry: dict) -> list[Path]:
        graph = root / entry["graph"]
        return [graph, graph.parent / WEIGHTS_FILE]

    def manifest(self) -> dict:
        return {}

    def finish(self, root: Path, manifest: dict) -> None:
        pass


TARGET = OnnxTarget()
