"""`qiedge export`: every component of a model (or a preset, with deterministic stand-in weights)
through one target's stages to an artifacts directory with its manifest.

Written through `staged_directory`, so a failed or interrupted export never leaves a
half-written artifacts directory.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from qiedge.core.artifacts import FORMAT_VERSION, MANIFEST, TOKENIZER
from qiedge.core.contract import DIMS
from qiedge.core.files import sha256_file, staged_directory
from qiedge.core.vision import VisionFacts
from qiedge.reference_model.model_dir import ModelDir
from qiedge.reference_model.presets import Preset, config_dict

import qiedge

from .sources import CheckpointSource, RandomSource
from .specs import SPECS, ModelConfigs, declared_shape, describe
from .stages import GraphJob, Pass, Target, run_stages
from .targets import get_target

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def model_configs(model: ModelDir | None, preset: Preset | None) -> ModelConfigs:
    if model is not None:
        return ModelConfigs(model.transformer, model.vae, model.encoder_config)
    from transformers import Qwen3VLConfig

    encoder = Qwen3VLConfig(
        text_config=dict(preset.encoder.text_config), vision_config=dict(preset.encoder.vision_config)
    ).to_dict()
    return ModelConfigs(preset.transformer, preset.vae, encoder)


def _source(spec, model: ModelDir | None, configs: ModelConfigs, seed: int):
    if model is not None:
        return CheckpointSource(model.path / spec.weights)
    with torch.device("meta"):
        module = spec.build(configs)
    return RandomSource({k.removeprefix(spec.key_prefix): tuple(v.shape) for k, v in module.state_dict().items()}, seed)


def _write_tokenizer(folder: Path, model: ModelDir | None) -> None:
    target = folder / TOKENIZER
    target.parent.mkdir(parents=True)
    if model is not None:
        shutil.copyfile(model.path / "processor" / "tokenizer.json", target)
    else:
        from qiedge.reference_model.model_dir import build_tokenizer

        build_tokenizer().backend_tokenizer.save(str(target))


def _tool_versions(tools: tuple[str, ...]) -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in tools}


def components_of(target, components: list[str] | None) -> list[str]:
    """The components an export of this target writes: the requested ones, checked, or all it can."""
    names = components or list(target.components or SPECS)
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        raise ValueError(f"unknown component(s) {', '.join(unknown)}; choose from {', '.join(SPECS)}")
    for name in names:
        if name in target.unsupported:
            raise ValueError(f"{target.name} cannot export {name}: {target.unsupported[name]}")
    return names


def export_artifacts(
    out: str | Path,
    target: str = "onnx",
    precision: str | None = None,
    model: ModelDir | None = None,
    preset: Preset | None = None,
    seed: int = 0,
    components: list[str] | None = None,
    passes: Sequence[Pass] = (),
    extra: dict | None = None,
    on_component: Callable[[str, float], None] | None = None,
    target_options: dict | None = None,
    extra_files: dict[str, str] | None = None,
) -> dict:
    """Every component through the target's stages, checked and hashed; returns the manifest
    written to `out/manifest.json`.

    `passes` are rewrites from outside the target (quantization's Q/DQ insertion), each for the
    components it applies to; `extra` goes into the manifest's top level (the quantization record),
    `extra_files` (name -> text) beside it, published with everything else.
    """
    chosen = get_target(target, **(target_options or {}))
    precision = precision or chosen.default_precision
    if precision not in chosen.precisions:
        raise ValueError(f"the {chosen.name} target exports {', '.join(chosen.precisions)}, not {precision!r}")
    names = components_of(chosen, components)
    configs = model_configs(model, preset)
    shared = {}  # folder -> what its graphs share (ONNX's weights file, Core ML's chunk plan)
    entries = {}
    chosen.prepare(configs, names, precision, shared)
    with staged_directory(Path(out)) as tmp:
        _write_tokenizer(tmp, model)  # first: a target may bucket prompts by the tokenizer's counts
        for name in names:
            spec = SPECS[name]
            start = time.perf_counter()
            applied = [p for p in passes if p.applies_to(spec)]
            job = GraphJob(
                spec,
                configs,
                _source(spec, model, configs, seed),
                PRECISIONS[precision],
                tmp / spec.folder,
                spec.constants(configs),
                shared.setdefault(spec.folder, {}),
                [p.weights for p in applied if p.weights is not None],
            )
            run_stages(job, chosen.stages(applied))
            entries[name] = _entry(spec, configs, job.path.relative_to(tmp), precision) | chosen.entry(job)
            for p in applied:
                entries[name].update(p.entry)
            if on_component:
                on_component(name, time.perf_counter() - start)
        manifest = _manifest(tmp, chosen, entries, configs, model, preset, precision, seed) | (extra or {})
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        (tmp / MANIFEST).write_text(_dumps(manifest))
        chosen.finish(tmp, manifest)
    return manifest


def _dim_ranges(spec, configs: ModelConfigs) -> dict[str, list[int]]:
    """The [min, max] the graph accepts for each symbolic dim of its inputs."""
    names = {d.rpartition("*")[2] for t in spec.inputs for d in declared_shape(t, configs) if isinstance(d, str)}
    return {name: list(DIMS[name][:2]) for name in sorted(names)}


def _entry(spec, configs: ModelConfigs, graph: Path, precision: str) -> dict:
    return {
        "graph": graph.as_posix(),
        "files": {},
        "inputs": describe(spec.inputs, configs, precision),
        "outputs": describe(spec.outputs, configs, precision),
        "dims": _dim_ranges(spec, configs),
        "precision": precision,
        "quantization": None,
        "parity": None,
    }


def _manifest(
    root: Path, target: Target, entries: dict, configs: ModelConfigs, model, preset, precision: str, seed: int
) -> dict:
    for entry in entries.values():
        files = target.files(root, entry)
        entry["files"] = {f.relative_to(root).as_posix(): sha256_file(f) for f in files}
    source = (
        {"model": str(model.path), "model_hash": model.fingerprint()}
        if model is not None
        else {"preset": preset.name, "model_hash": f"random-weights:{preset.name}:seed{seed}"}
    )
    t = configs.transformer
    return {
        "format_version": FORMAT_VERSION,
        "qiedge_version": qiedge.__version__,
        "target": target.name,
        "precision": precision,
        "source": source,
        "model": {
            "transformer": config_dict(t),
            "vae": config_dict(configs.vae),
            "axes_dims_rope": list(t.axes_dims_rope),
            "latent_channels": t.in_channels,
            "scheduler": config_dict(model.scheduler) if model is not None else config_dict(_default_scheduler()),
            "sample_sigmas": list(model.sample_sigmas)
            if model is not None and model.sample_sigmas
            else (list(preset.sample_sigmas) if preset is not None and preset.sample_sigmas else None),
            "tokenizer": TOKENIZER,
            "tokenizer_sha256": sha256_file(root / TOKENIZER),
            "vision": _vision_facts(configs, model).to_dict(),
        },
        "tools": _tool_versions(target.tools),
        **target.manifest(),
        "components": entries,
    }


def _vision_facts(configs: ModelConfigs, model: ModelDir | None) -> VisionFacts:
    """The image processor's settings, which the runtime applies without transformers."""
    if model is not None:
        return VisionFacts.from_model_dir(model.path, configs.encoder)
    from qiedge.reference_model.model_dir import image_processor_config

    return VisionFacts.from_configs(image_processor_config(), configs.encoder)


def _default_scheduler():
    from qiedge.core.scheduler import SchedulerConfig

    return SchedulerConfig()


def _dumps(data: dict) -> str:
    import json

    return json.dumps(data, indent=2) + "\n"
