"""The TensorRT target: the ONNX graphs TensorRT's parser reads, written for it, and how to turn
them into engines on the device.

TensorRT is not installable where qiedge is built, so its input is made right by construction and
checked statically (export/tensorrt_check.py); engines are built on the target GPU, where
TensorRT is. The graphs are the ONNX target's, through the same specs, stages and Q/DQ passes,
then:
1. fp32 islands for what fp16 would overflow (export/tensorrt_islands.py), so the graph is the
   strongly typed network it describes;
2. saved, then checked against TensorRT's ONNX operator table and its Q/DQ rules for the
   version the device runs;
3. per graph an optimization profile from the size buckets and prompt lengths
   (export/tensorrt_profiles.py; with `vae_tile`, the VAE decoder's from its tiles' shapes, so
   its engine is sized for one tile), recorded in the manifest; and either the engines built here
   (`--build`, where `tensorrt` imports: export/tensorrt_build.py) or `build_engines.sh` with
   the trtexec commands to run on the device.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from qiedge.core.buckets import Size
from qiedge.core.tiles import decoded_sizes, tiling_for
from qiedge.core.units import PIXELS_PER_TOKEN

from . import onnx, tensorrt_check, tensorrt_islands
from .specs import ComponentSpec
from .stages import ExportError, GraphJob, Stage, configure
from .tensorrt_devices import DEVICES, PRECISIONS
from .tensorrt_profiles import BuildSettings, ProfileRanges, build_script, is_static, profile, trtexec_command

SCRIPT = "build_engines.sh"
ENGINE_SUFFIX = ".plan"


@dataclass(frozen=True)
class TensorRTOptions:
    precision: str = "fp16"  # of the graphs TensorRT builds: fp16 / bf16, or a recipe's Q/DQ over fp16
    device: str = "hopper"
    trt: str | None = None  # the TensorRT version to check and build for (default: the device's)
    sizes: tuple[Size, ...] = (Size(1024, 1024),)
    prompt_lengths: tuple[int, ...] = (128, 512)
    max_batch: int = 1
    static: bool = False
    build: bool = False
    opt_level: int = 3
    timing_cache: str | None = None  # a cache from an earlier build on the same GPU, read and updated
    weight_streaming: bool = False
    vae_tile: int | None = None  # px: the VAE decoder's profile spans its tiles' shapes (core/tiles.py)

    @property
    def version(self) -> str:
        return tensorrt_check.resolve(self.trt or DEVICES[self.device].tensorrt)

    def check(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device {self.device!r}: choose {', '.join(DEVICES)}")
        device = DEVICES[self.device]
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r}: the tensorrt target builds {', '.join(PRECISIONS)}")
        if self.precision not in device.precisions:
            raise ValueError(
                f"{device.name} cannot run {self.precision} (no FP8 tensor cores before Ada / Hopper): "
                f"choose {', '.join(device.precisions)}, or --device ada / hopper / thor / blackwell"
            )
        tensorrt_check.table(self.version)  # an unknown version is refused now, naming the known ones
        if not 0 <= self.opt_level <= 5:
            raise ValueError(f"--opt-level must be 0-5, got {self.opt_level}")
        self.ranges.check()
        if self.vae_tile is not None:
            tiling_for(self.vae_tile)
            if self.static:
                raise ValueError("--vae-tile: tiles come in several shapes, and a static engine takes one")
        if self.build:
            from .tensorrt_build import tensorrt

            tensorrt()  # refused now, before any work, where TensorRT does not import

    @property
    def ranges(self) -> ProfileRanges:
        return ProfileRanges(self.sizes, self.prompt_lengths, self.max_batch, self.static)

    def ranges_for(self, spec: ComponentSpec) -> ProfileRanges:
        """A graph's ranges: the VAE decoder's, with --vae-tile, span its tiles' sizes, from one
        latent (the transformer takes any size between --sizes, whose edge tiles may be that
        narrow) up to the largest tile."""
        if spec.name != "vae_decoder" or self.vae_tile is None:
            return self.ranges
        narrowest = Size(PIXELS_PER_TOKEN, PIXELS_PER_TOKEN)
        return dataclasses.replace(self.ranges, sizes=(narrowest, *decoded_sizes(self.sizes, self.vae_tile)))

    @property
    def settings(self) -> BuildSettings:
        return BuildSettings(
            optimization_level=self.opt_level,
            workspace_mb=DEVICES[self.device].workspace_mb,
            weight_streaming=self.weight_streaming,
        )


class TensorRTTarget:
    name = "tensorrt"
    tools = ("torch", "onnx", "onnxscript", "transformers")
    default_precision = "fp16"
    precisions = ("fp16", "bf16")  # of the float graph; int8 / fp8 / int4 are Q/DQ passes over fp16
    # The one-shot transformer is left out: the runtime runs the prefix once and the step per step.
    components = ("condition_encoder", "transformer_prefix", "transformer_step", "vae_encoder", "vae_decoder")
    unsupported: dict[str, str] = {}

    def __init__(self, options: TensorRTOptions = TensorRTOptions()):
        self.options = options

    def configured(self, **options) -> TensorRTTarget:
        return TensorRTTarget(configure(self.name, self.options, options))

    def prepare(self, configs, components, precision, shared) -> None:
        pass

    def stages(self, passes) -> list[Stage]:
        return [
            *onnx.build_stages(passes),
            Stage("fp32 islands", _islands),
            onnx.SAVE,
            Stage("profile", self._profile, self._check_tensorrt),
        ]

    def _profile(self, job: GraphJob) -> None:
        job.shared.setdefault("profiles", {})[job.spec.name] = profile(
            job.spec, job.configs, self.options.ranges_for(job.spec).dims(job.dropped_tokens)
        )

    def _check_tensorrt(self, job: GraphJob) -> None:
        problems = tensorrt_check.check_file(job.path, self.options.version)
        if problems:
            listed = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise ExportError(f"{job.spec.name}: not TensorRT {self.options.version}-ready: {listed}")

    def entry(self, job: GraphJob) -> dict:
        shapes = job.shared["profiles"][job.spec.name]
        record = {"opset": job.graph.opset_imports[""], "profile": shapes, "static": is_static(shapes)}
        if self.options.build:
            from .tensorrt_build import build_engine

            engine = job.path.with_suffix(ENGINE_SUFFIX)
            built = build_engine(job.path, engine, shapes, self.options.settings, self.options.timing_cache)
            record["engine"] = built | {"file": engine.relative_to(job.folder.parent).as_posix()}
        return record

    def files(self, root: Path, entry: dict) -> list[Path]:
        engine = [root / entry["engine"]["file"]] if entry.get("engine") else []
        return [*onnx.TARGET.files(root, entry), *engine]

    def manifest(self) -> dict:
        o = self.options
        return {
            "tensorrt": {
                "device": o.device,
                "device_name": DEVICES[o.device].name,
                "checked_against": o.version,
                "sizes": [str(s) for s in o.sizes],
                "prompt_lengths": list(o.prompt_lengths),
                "max_batch": o.max_batch,
                "settings": vars(o.settings),
                "engines": "built" if o.build else f"not built: run {SCRIPT} on the device",
            },
            "vae_tile": o.vae_tile,
        }

    def finish(self, root: Path, manifest: dict) -> None:
        """After every graph: the build script beside them (also when the engines were built here)."""
        commands = [
            trtexec_command(entry["graph"], _engine_name(entry["graph"]), entry["profile"], self.options.settings)
            for entry in manifest["components"].values()
        ]
        device = DEVICES[self.options.device].name
        header = (
            f"Builds the TensorRT engines of this artifacts directory on the target GPU ({device}),\n"
            f"for TensorRT {self.options.version}; run it there, where trtexec is (TRTEXEC=/path/to/trtexec to choose)."
        )
        script = root / SCRIPT
        script.write_text(build_script(commands, header))
        script.chmod(0o755)


def _engine_name(graph: str) -> str:
    return str(Path(graph).with_suffix(ENGINE_SUFFIX).as_posix())


def _islands(job: GraphJob) -> None:
    if job.precision.is_floating_point and job.precision.itemsize == 2:
        tensorrt_islands.fp32_islands(job.graph)


TARGET = TensorRTTarget()
