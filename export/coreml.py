"""The Core ML target: ML Programs, one multifunction `.mlpackage` per artifacts folder (or per
chunk).

Core ML runs fastest on fixed shapes, so each graph is converted once per bucket (core/buckets.py:
an image size, a prompt length, or both) and the buckets become functions of one package whose
weights are stored once; the transformer's prefix and step graphs are functions of the same
package. With `vae_tile` the VAE decoder's buckets are the shapes of its tiles (core/tiles.py),
so a phone decodes a large image a tile's activations at a time. Where the Neural Engine may
run them, the transformer and the condition encoder are cut into chunks of at most
`max_chunk_mb` of weights (export/chunks.py), each its own package, all planned before anything
converts. iOS17 has no multifunction packages, so there each graph is its own package with one
bucket.

One stage, "convert" (export/stages.py runs it), one unit (a component or a chunk) at a time: its
weights streamed from the source into the reference wrapper, then per bucket `torch.export` at
the bucket's shapes, the decompositions coremltools expects, and coremltools (fp16 compute with
the measured fp32 islands, export/coreml_fp16.py; converter fixes, export/coreml_ops.py; the
program checked once per pass pipeline, export/coreml_validate.py), integer and boolean inputs as
int32 (Core ML has neither int64 nor bool inputs); each function's inputs and outputs must be the
spec's; then the optional weight compression (export/coreml_compress.py), and the unit's
functions added to its package. Its check reads every package back: each must hold its
functions.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from qiedge.core.buckets import Size, functions
from qiedge.core.coreml import coremltools
from qiedge.core.tiles import decoded_sizes, tiling_for

from . import chunks, coreml_attention, coreml_compress, coreml_fp16, coreml_validate
from .chunks import Chunk
from .coreml_convert import convert, empty_inputs, interface, load_module, tables_in_fp16
from .specs import SPECS, ComponentSpec, ModelConfigs
from .stages import ExportError, GraphJob, Stage, configure

DEPLOYMENT_TARGETS = ("iOS18", "macOS15", "iOS17")
COMPUTE_UNITS = ("all", "cpu_and_gpu", "cpu_and_ne")
MULTIFUNCTION = ("iOS18", "macOS15")  # deployment targets whose packages may hold several functions
FUNCTIONS_DIR = ".functions"  # one converted package per function, until added to its package
SCRATCH_DIR = ".scratch"  # coremltools' temporary packages, deleted with each unit
NEURAL_ENGINE_MB = 1024  # the Neural Engine on iOS does not load a model with more weights than this


@dataclass(frozen=True)
class CoreMLOptions:
    deployment_target: str = "iOS18"
    compute_units: str = "all"
    sizes: tuple[Size, ...] = (Size(1024, 1024),)
    prompt_lengths: tuple[int, ...] = (128, 512)
    compress: str | None = None
    sensitive: tuple[str, ...] = ()  # layers `mixed` keeps at 8 bits (checkpoint names, `{last}`: the last block)
    max_chunk_mb: float | None = None  # None: 1024 where the Neural Engine may run it, else unchunked
    vae_tile: int | None = None  # px: the VAE decoder's functions are the tiles of each size (core/tiles.py)

    @property
    def chunk_limit_mb(self) -> float | None:
        if self.max_chunk_mb is not None:
            return self.max_chunk_mb
        return None if self.compute_units == "cpu_and_gpu" else NEURAL_ENGINE_MB

    def check(self) -> None:
        if self.deployment_target not in DEPLOYMENT_TARGETS:
            raise ValueError(f"deployment target {self.deployment_target!r}: choose {', '.join(DEPLOYMENT_TARGETS)}")
        if self.compute_units not in COMPUTE_UNITS:
            raise ValueError(f"compute units {self.compute_units!r}: choose {', '.join(COMPUTE_UNITS)}")
        if self.deployment_target not in MULTIFUNCTION and (len(self.sizes) > 1 or len(self.prompt_lengths) > 1):
            raise ValueError(
                f"{self.deployment_target} has no multifunction packages: give one size and one prompt length "
                f"(--prompt-lengths defaults to 128,512), or deploy to {' / '.join(MULTIFUNCTION)}"
            )
        coreml_compress.check(self.compress, self.deployment_target)
        if self.max_chunk_mb is not None and not self.max_chunk_mb > 0:
            raise ValueError(f"--max-chunk-mb must be positive, got {self.max_chunk_mb}")
        if self.vae_tile is not None:
            tiling_for(self.vae_tile)
            if self.deployment_target not in MULTIFUNCTION:
                raise ValueError(
                    f"--vae-tile needs a function per tile shape, which {self.deployment_target} packages cannot "
                    f"hold: deploy to {' / '.join(MULTIFUNCTION)}"
                )

    def sizes_for(self, spec: ComponentSpec) -> tuple[Size, ...]:
        """The sizes a graph is converted at: the VAE decoder's, with --vae-tile, are its tiles'."""
        return decoded_sizes(self.sizes, self.vae_tile) if spec.name == "vae_decoder" else self.sizes

    @property
    def attention(self) -> str:
        return coreml_attention.layout_for(self.compute_units)


@dataclass(frozen=True)
class Unit:
    """One graph the target converts: a component, or one chunk of it, into one package."""

    spec: ComponentSpec
    package: str  # the package's name in the component's folder, without .mlpackage
    chunk: Chunk | None = None
    functions: dict[str, dict] = field(default_factory=dict)  # function name -> the dims it fixes


class CoreMLTarget:
    name = "coreml"
    tools = ("torch", "coremltools", "transformers")
    default_precision = "fp16"
    precisions = ("fp16", "fp32")
    # The one-shot transformer graph exists for targets that cannot pass K/V between calls.
    components = ("condition_encoder", "transformer_prefix", "transformer_step", "vae_encoder", "vae_decoder")
    unsupported = {
        "vision_encoder": "Core ML packages are text-to-image only (no condition-image buckets yet); "
        "export the vision tower with --target onnx"
    }

    def __init__(self, options: CoreMLOptions = CoreMLOptions()):
        self.options = options

    def configured(self, **options) -> CoreMLTarget:
        return CoreMLTarget(configure(self.name, self.options, options))

    @property
    def multifunction(self) -> bool:
        return self.options.deployment_target in MULTIFUNCTION

    def stages(self, passes: Sequence[Stage]) -> list[Stage]:
        if passes:
            raise ExportError("Q/DQ passes are ONNX-only; Core ML packages compress with --compress")
        return [Stage("convert", self._convert, self._check_saved)]

    def prepare(self, configs: ModelConfigs, components: Sequence[str], precision: str, shared: dict) -> None:
        """Every chunked component planned before anything converts, so that a limit a block (or
        the token table) cannot meet is refused at once, not after hours of the 7B transformer.
        One plan per folder: the transformer's prefix and step share their chunks' packages."""
        for name in components:
            folder = shared.setdefault(SPECS[name].folder, {})
            if name in chunks.CHUNKED and "chunks" not in folder:
                folder["chunks"] = self._plan(SPECS[name], configs, precision)

    def _plan(self, spec: ComponentSpec, configs: ModelConfigs, precision: str) -> list[Chunk]:
        o = self.options
        if o.chunk_limit_mb is None:
            return []
        float_bytes = {"fp16": 2, "fp32": 4}[precision]
        mode, sensitive = coreml_compress.mode_for(o.compress, spec.weights), self._sensitive(configs)

        def stored(key, shape):
            return coreml_compress.stored_bytes(mode, float_bytes, key, shape, sensitive)

        return chunks.plan(spec.name, configs, stored, o.chunk_limit_mb)

    def _units(self, job: GraphJob) -> list[Unit]:
        spec, planned = job.spec, job.shared.get("chunks", [])
        if len(planned) <= 1:
            return [Unit(spec, "model" if self.multifunction else spec.stem)]
        return [
            Unit(
                chunks.chunk_spec(spec, c, job.configs),
                c.package if self.multifunction else f"{spec.stem}_{c.package}",
                c,
            )
            for c in planned
        ]

    def _precision(self, job: GraphJob) -> str:
        return {torch.float16: "fp16", torch.float32: "fp32"}[job.precision]

    def _convert(self, job: GraphJob) -> None:
        """Each unit in turn: its weights loaded, every bucket converted, checked and compressed,
        then added to its package; one unit's weights in memory and on disk twice at most."""
        o, precision = self.options, self._precision(job)
        mode, sensitive, dropped = (
            coreml_compress.mode_for(o.compress, job.spec.weights),
            self._sensitive(job.configs),
            job.dropped_tokens,
        )
        job.graph = self._units(job)
        for unit in job.graph:
            with _scratch(job.folder / SCRATCH_DIR), coreml_validate.once_per_pipeline():
                self._convert_unit(job, unit, precision, mode, sensitive, dropped)
        job.path = job.folder / f"{job.graph[0].package}.mlpackage"

    def _convert_unit(self, job: GraphJob, unit: Unit, precision: str, mode, sensitive, dropped: int) -> None:
        o = self.options
        module = load_module(unit.spec, job.configs, job.source, job.extras)
        if precision == "fp16":
            tables_in_fp16(module)
        used = {str(d).rpartition("*")[2] for t in (*unit.spec.inputs, *unit.spec.outputs) for d in t.shape}
        unit.functions.update(functions(unit.spec.stem, used, o.sizes_for(unit.spec), o.prompt_lengths, dropped))
        if not self.multifunction:
            unit.functions.update({"main": unit.functions.popitem()[1]})
        staged = {}
        for name, dims in unit.functions.items():
            model = convert(module, unit.spec, job.configs, dims, precision, o)
            _check_interface(model, unit.spec, name, empty_inputs(unit.spec, job.configs, dims))
            staged[name] = job.folder / FUNCTIONS_DIR / f"{name}.mlpackage"
            compressed = coreml_compress.compress(model, mode, unit.spec.key_prefix, sensitive)
            compressed.save(str(staged[name]))
            _discard(model, compressed)
        del module
        self._add_functions(job.folder / f"{unit.package}.mlpackage", staged)
        shutil.rmtree(job.folder / FUNCTIONS_DIR)

    def _add_functions(self, package: Path, staged: dict[str, Path]) -> None:
        """The package with the functions it holds (an earlier component's: the prefix's, when
        the step's are added) and the staged ones; identical weights are stored once."""
        ct = coremltools()
        if not self.multifunction:
            shutil.copytree(staged["main"], package)
            return
        descriptor = ct.utils.MultiFunctionDescriptor()
        held = ct.models.MLModel(str(package), skip_model_load=True).get_spec() if package.exists() else None
        for name in held.mlProgram.functions if held else ():
            descriptor.add_function(str(package), src_function_name=name, target_function_name=name)
        for name, path in staged.items():
            descriptor.add_function(str(path), src_function_name="main", target_function_name=name)
        descriptor.default_function_name = held.description.defaultFunctionName if held else next(iter(staged))
        merged = package.with_name(f".{package.name}")
        ct.utils.save_multifunction(descriptor, str(merged))
        shutil.rmtree(package, ignore_errors=True)
        merged.rename(package)

    def _sensitive(self, configs: ModelConfigs) -> tuple[str, ...]:
        last = str(configs.transformer.num_layers - 1)
        return tuple(p.replace("{last}", last) for p in self.options.sensitive)

    def _check_saved(self, job: GraphJob) -> None:
        ct = coremltools()
        for unit in job.graph:
            path = job.folder / f"{unit.package}.mlpackage"
            saved = ct.models.MLModel(str(path), skip_model_load=True).get_spec().mlProgram.functions
            missing = [name for name in unit.functions if name not in saved]
            if missing:
                raise ExportError(f"{job.spec.name}: {path.name} lacks function(s) {', '.join(missing)}")

    def entry(self, job: GraphJob) -> dict:
        o, precision = self.options, self._precision(job)
        units = job.graph
        record = {
            "deployment_target": o.deployment_target,
            "compute_units": o.compute_units,
            # The split layout rewrites the transformer's attention; the others keep theirs.
            "attention": o.attention if job.spec.weights == "transformer" else coreml_attention.PLAIN,
            "compression": coreml_compress.record(
                coreml_compress.mode_for(o.compress, job.spec.weights), self._sensitive(job.configs)
            ),
            "fp32_ops": coreml_fp16.record(precision, job.spec.weights),
        }

        def io(spec: ComponentSpec) -> dict:
            """Inputs and outputs as Core ML sees them (every bucket empties the same inputs)."""
            dims = next(iter(units[0].functions.values()))
            return interface(spec, job.configs, precision, empty_inputs(spec, job.configs, dims))

        whole = io(job.spec)
        if units[0].chunk is None:
            return record | whole | {"functions": units[0].functions}
        return (
            record
            | whole
            | {
                "chunks": [
                    {
                        "graph": f"{job.spec.folder}/{u.package}.mlpackage",
                        "layers": [u.chunk.layers.start, u.chunk.layers.stop],
                        # Tensors holding every layer in the component, this chunk's layers here.
                        "layered": [t.name for t in (*job.spec.inputs, *job.spec.outputs) if t.shape[0] == "layers"],
                        **io(u.spec),
                        "functions": u.functions,
                    }
                    for u in units
                ]
            }
        )

    def manifest(self) -> dict:
        """The buckets, so a runtime refuses a request none of them holds before loading anything,
        and the tiles the VAE decoder was exported for (None: whole images)."""
        sizes, lengths = [str(s) for s in self.options.sizes], list(self.options.prompt_lengths)
        return {"buckets": {"sizes": sizes, "prompt_lengths": lengths}, "vae_tile": self.options.vae_tile}

    def finish(self, root: Path, manifest: dict) -> None:
        pass

    def files(self, root: Path, entry: dict) -> list[Path]:
        packages = [c["graph"] for c in entry.get("chunks", [])] or [entry["graph"]]
        return sorted(f for package in packages for f in (root / package).rglob("*") if f.is_file())


@contextmanager
def _scratch(folder: Path) -> Iterator[None]:
    """coremltools' temporary packages written here, and deleted on leaving: it deletes them only
    at exit, and `save_multifunction` gives no handle on its own (833 MB per 7B chunk, measured)."""
    folder.mkdir(parents=True, exist_ok=True)
    saved, tempfile.tempdir = tempfile.tempdir, str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = saved
        shutil.rmtree(folder, ignore_errors=True)


def _discard(*models) -> None:
    """Delete the temporary packages coremltools writes for converted models now: it would only
    at exit, and a 7B export would fill the disk with one per function (833 MB each, measured)."""
    for model in models:
        if model.is_temp_package and model.package_path:
            shutil.rmtree(model.package_path, ignore_errors=True)


def _check_interface(model, spec: ComponentSpec, function: str, empty) -> None:
    description = model.get_spec().description
    found = ([i.name for i in description.input], [o.name for o in description.output])
    expected = ([t.name for t in spec.inputs if t.name not in empty], [t.name for t in spec.outputs])
    if found != expected:
        raise ExportError(f"{spec.name}: function {function} takes/returns {found}, the spec {expected}")


TARGET = CoreMLTarget()
