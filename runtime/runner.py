"""Assemble the sampler's sessions from the user's choice of model, artifacts and backends."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from qiedge.core.artifacts import Artifacts, ModelFacts
from qiedge.core.tiles import Tiling
from qiedge.core.units import PIXELS_PER_TOKEN

from . import auto, ort_int8
from .auto import BACKENDS
from .backends import REGISTRY, Backend, backend_for, open_backend
from .hardware import detect
from .sampler import TEXT_TO_IMAGE, Request, Sessions, schedule_for
from .tiled_vae import TiledDecoder

# Backends whose graphs take the exported sizes only (Core ML's buckets, TensorRT's profiles).
FIXED_SHAPES = ("coreml", "tensorrt")


@dataclass
class Runtime:
    facts: ModelFacts
    sessions: Sessions
    source: str  # what the images are made from: a model directory or an artifacts directory
    source_hash: str
    backend: Backend  # the transformer's and VAE's
    choice: auto.Choice  # which backend runs them, and why
    vae_tiling: Tiling | None  # the tiles the VAE decodes in; None: whole images
    warnings: list[str] = field(default_factory=list)


def _job_flop(model_dir, facts: ModelFacts, request: Request | None) -> float:
    """The denoising loop's FLOPs for this request; unbounded without one (a long-running user)."""
    if request is None:
        return float("inf")
    from qiedge.reference_model.weights import parameter_count

    tokens = (request.width // PIXELS_PER_TOKEN) * (request.height // PIXELS_PER_TOKEN)
    steps = len(schedule_for(facts, tokens, request.steps)) - 1
    images = len(request.prompts) * (2 if request.guided else 1)
    return auto.transformer_flop(parameter_count(model_dir.path / "transformer"), tokens, steps, images)


def _choose(
    backend: str, model_dir, store: Artifacts | None, facts: ModelFacts, request: Request | None
) -> auto.Choice:
    if backend == "auto" and store is None:
        return auto.choose(detect(), _job_flop(model_dir, facts, request), auto.visible_gpu())
    if backend == "auto":
        name = backend_for(store)
        reason = f"{store.manifest['target']} artifacts"
    else:
        name, reason = backend, "as asked"
    if name == "onnxruntime" and store is not None and any(c["precision"] == "int8" for c in store.components.values()):
        reason += f"; int8 {ort_int8.describe()}"  # which kernels keep the int8 graphs exact here
    return auto.Choice(name, reason)


def _check_buckets(store: Artifacts, request: Request) -> None:
    """Fixed-shape artifacts (Core ML) hold some sizes only: refuse any other before loading."""
    sizes = store.manifest.get("buckets", {}).get("sizes")
    if sizes and f"{request.width}x{request.height}" not in sizes:
        raise ValueError(
            f"size {request.width}x{request.height} has no bucket in {store.path}; exported sizes: {', '.join(sizes)}"
        )


def _check_editing(store: Artifacts, request: Request, encoder: str) -> None:
    """An edit on graphs needs the vision tower's and the VAE encoder's: refuse before loading."""
    graphs = REGISTRY[encoder].needs == "artifacts"
    needed = (["vision_encoder"] if graphs else []) + ["vae_encoder"]
    missing = [c for c in needed if c not in store.components]
    if request.images and missing:
        raise ValueError(
            f"editing needs {' and '.join(missing)}, which {store.path} does not hold ("
            f"{store.manifest['target']} artifacts of {', '.join(store.components)}): export them, or run the "
            "condition encoder on the reference with --model DIR --encoder-backend torch"
        )


def decoder_tiling(store: Artifacts | None, asked: Tiling | None, backend: str) -> Tiling | None:
    """The tiles the VAE decodes in on `backend`. A fixed-shape backend's decoder takes the shapes
    it was exported for: the artifacts' tiles (`export --vae-tile`), asked or not, and no others."""
    exported = store.vae_tiling if store and backend in FIXED_SHAPES else None
    if backend not in FIXED_SHAPES or asked == exported:
        return asked
    if exported is None:
        raise ValueError(
            f"--vae-tile: the {backend} backend's VAE decoder takes the sizes it was exported for, and tiles are "
            f"sizes of their own: export with --vae-tile {asked.pixels} for them (not --static), or decode whole"
        )
    if asked is not None:
        raise ValueError(f"--vae-tile {asked.pixels}: {store.path} was exported for {exported.pixels} px tiles")
    return exported


def open_runtime(
    model: Path | None = None,
    artifacts: Path | None = None,
    backend: str | None = None,
    encoder_backend: str | None = None,
    threads: int | None = None,
    request: Request | None = None,
    vae_tiling: Tiling | None = None,
    **options,
) -> Runtime:
    """Sessions for one generate: the transformer, VAE and encoder each on the backend asked for.

    `auto` (the default) runs `--artifacts` on their target's backend, and a `--model` on the torch path
    that is fastest on this CPU for a job of `request`'s size. Editing on graphs needs the
    vision tower's and the VAE encoder's. `vae_tiling` decodes large images tile by tile
    (runtime/tiled_vae.py); fixed-shape artifacts exported for tiles decode in theirs. `options` go
    to the backend (the cuda backend's precision and quantizer).
    """
    from qiedge.reference_model.model_dir import ModelDir

    backend = backend or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    model_dir = ModelDir.open(model) if model else None
    store = Artifacts.open(artifacts) if artifacts else None
    if model_dir is None and store is None:
        raise ValueError("pass --model DIR or --artifacts ART")
    facts = store.facts if store else ModelFacts.from_model_dir(model_dir)
    choice = _choose(backend, model_dir, store, facts, request)
    if store and request:
        _check_buckets(store, request)
        _check_editing(store, request, encoder_backend or choice.backend)
    vae_tiling = decoder_tiling(store, vae_tiling, choice.backend)
    warning = auto.bf16_warning(detect()) if choice.backend == "torch-bf16" else None
    main = open_backend(choice.backend, model_dir, store, threads, **options)
    encoder = main if encoder_backend in (None, choice.backend) else open_backend(encoder_backend, model_dir, store)
    encode = encoder.prompt_encoder(facts)
    sessions = Sessions(encode, main.load, arrays=main.arrays)
    for component in TEXT_TO_IMAGE:  # verified and loaded now, so a bad artifact fails before sampling
        sessions[component]
    if vae_tiling is not None:
        sessions = sessions.replacing(vae_decoder=TiledDecoder(sessions["vae_decoder"], vae_tiling, main.arrays))
    source, source_hash = (
        (str(store.path), store.manifest["source"]["model_hash"])
        if store
        else (str(model_dir.path), model_dir.fingerprint())
    )
    return Runtime(facts, sessions, source, source_hash, main, choice, vae_tiling, [warning] if warning else [])
