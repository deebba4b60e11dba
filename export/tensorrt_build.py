"""Engines built where `tensorrt` imports, which must be the GPU they will run on: TensorRT tunes
kernels for the GPU at hand, and an engine loads only on that GPU model and TensorRT version.

The same settings as `build_engines.sh` (export/tensorrt_profiles.py), through the Python API of
TensorRT 10 and 11: a strongly typed network parsed from the ONNX file (the graph decides every
layer's precision, so no precision flags), one optimization profile, the builder optimization
level, a workspace limit, an optional timing cache read and written back, weight streaming on
request; the engine's layer information is written beside it.
"""

from __future__ import annotations

from pathlib import Path

from .stages import ExportError
from .tensorrt_profiles import BuildSettings, is_static


def tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise ExportError(
            "--build needs TensorRT's Python package (import tensorrt) on the GPU the engines are for; "
            "without it, run the build_engines.sh this export writes on that device"
        ) from None
    return trt


def build_engine(onnx_path: Path, engine_path: Path, shapes: dict, settings: BuildSettings, cache: str | None) -> dict:
    """Build one engine; returns what the manifest records of it (the file relative to the artifacts root)."""
    trt = tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Always strongly typed (TensorRT 11 ignores the flag, 10 needs it, weight streaming too): the
    # graph decides every precision, whichever TensorRT builds it.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"{onnx_path.name}: TensorRT's ONNX parser refused it: {errors}")
    config = builder.create_builder_config()
    config.builder_optimization_level = settings.optimization_level
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if settings.weight_streaming:
        config.set_flag(trt.BuilderFlag.WEIGHT_STREAMING)
    cache_path = Path(cache) if cache else None
    timing = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.is_file() else b"")
    if timing is None or not config.set_timing_cache(timing, ignore_mismatch=False):
        raise ExportError(f"timing cache {cache_path}: unreadable, or from another GPU or TensorRT; delete it")
    profile = builder.create_optimization_profile()
    for name, s in shapes.items():
        profile.set_shape(name, s["min"], s["opt"], s["max"])
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"{onnx_path.name}: TensorRT could not build an engine (its log above says why)")
    engine_path.write_bytes(bytes(serialized))
    if cache_path:
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    _write_layers(trt, logger, serialized, engine_path.with_suffix(".layers.json"))
    return {
        "file": engine_path.name,  # beside its graph; the target makes it relative to the root
        "tensorrt": trt.__version__,
        **gpu(),
        "static": is_static(shapes),
        "weight_streaming": settings.weight_streaming,
    }


def gpu() -> dict:
    """The GPU this process runs on, as an engine records and checks it."""
    import torch

    major, minor = torch.cuda.get_device_capability()
    return {"gpu": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}"}


def _write_layers(trt, logger, serialized, path: Path) -> None:
    engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
    inspector = engine.create_engine_inspector()
    path.write_text(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
