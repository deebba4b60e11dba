"""Assemble the sampler's sessions from the user's choice of model, artifacts and backends."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .artifacts import Artifacts, ModelFacts
from .backends import Backend, OnnxRuntimeBackend
from .sampler import GraphPromptEncoder, Sessions
from .tokenizer import PromptTokenizer

BACKENDS = ("torch", "torch-bf16", "onnxruntime")


@dataclass
class Runtime:
    facts: ModelFacts
    sessions: Sessions
    source: str  # what the images are made from: a model directory or an artifacts directory
    source_hash: str
    backend: Backend  # the transformer's and VAE's


def _torch_backend(model, name: str):
    from .backends import TorchBackend

    return TorchBackend(model, fast=name == "torch-bf16")


def open_runtime(model: Path | None = None, artifacts: Path | None = None, backend: str | None = None,
                 encoder_backend: str | None = None, threads: int | None = None) -> Runtime:
    """Sessions for one generate: the transformer, VAE and encoder each on the backend asked for.

    With `--artifacts` the default backend is onnxruntime, with `--model` torch. Editing needs the
    vision tower, so its condition encoder runs on torch (from `--model`).
    """
    from qiedge.reference_model.model_dir import ModelDir

    backend = backend or ("onnxruntime" if artifacts else "torch")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    model_dir = ModelDir.open(model) if model else None
    store = Artifacts.open(artifacts) if artifacts else None
    if backend == "onnxruntime" and store is None:
        raise ValueError("the onnxruntime backend runs exported graphs: pass --artifacts ART")
    if model_dir is None and (backend.startswith("torch") or encoder_backend == "torch"):
        raise ValueError("the torch backends run the reference: pass --model DIR")

    main: Backend = OnnxRuntimeBackend(store, threads) if backend == "onnxruntime" else _torch_backend(model_dir, backend)
    facts = store.facts if store else ModelFacts.from_model_dir(model_dir)
    if (encoder_backend or backend).startswith("torch"):
        encode = model_dir.load_condition_encoder()  # transformers' processor + model: text and images
    else:
        encode = GraphPromptEncoder(PromptTokenizer(facts.tokenizer_json), main.load("condition_encoder"))
    sessions = Sessions(encode=encode, prefix=main.load("transformer_prefix"), step=main.load("transformer_step"),
                        vae_decoder=main.load("vae_decoder"), vae_encoder=lambda: main.load("vae_encoder"))
    if store:
        return Runtime(facts, sessions, str(store.path), store.manifest["source"]["model_hash"], main)
    return Runtime(facts, sessions, str(model_dir.path), model_dir.fingerprint(), main)
