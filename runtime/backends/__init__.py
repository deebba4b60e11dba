"""One Backend protocol: `load(component) -> Session`, `Session.run(feeds) -> outputs`, and the
registry of backends by the name `--backend` takes.

Sessions take arrays named as in the export specs, whatever runs them, so the sampler and the
parity checks serve every backend. They take NumPy arrays or the backend's own (`arrays`:
runtime/arrays.py) and return the backend's own: NumPy on the CPU backends, device tensors on a
GPU one. Each component may use a different backend.
A new backend is one module here (its sessions, and `open(name, model, artifacts, threads)`) and
one registry entry saying what it needs. Modules load on use: naming the backends imports nothing.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

    from ..arrays import Arrays


class Session(Protocol):
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class Backend(Protocol):
    name: str
    arrays: Arrays  # where its sessions' arrays live

    def load(self, component: str) -> Session: ...

    def prompt_encoder(self, facts): ...  # prompts (and condition images) -> EncodedPrompt


@dataclass(frozen=True)
class Entry:
    module: str  # defines `open(name, model, artifacts, threads, **options) -> Backend`
    needs: str  # "model": a model directory (--model); "artifacts": exported graphs (--artifacts)
    target: str | None = None  # the export target whose artifacts it runs
    options: tuple[str, ...] = ()  # the keyword options its `open` takes
    reads: tuple[str, ...] = ()  # other targets whose artifacts it runs as well (the same ONNX graphs)
    requires: str | None = None  # a module that must import for it to run here


NEEDS = {
    "model": "runs the reference: pass --model DIR",
    "artifacts": "runs exported graphs: pass --artifacts ART",
}
REGISTRY = {
    "torch": Entry("qiedge.runtime.backends.pytorch", "model"),
    "torch-compile": Entry("qiedge.runtime.backends.pytorch", "model"),
    "torch-bf16": Entry("qiedge.runtime.backends.pytorch", "model"),
    # TensorRT's graphs are ONNX: ONNX Runtime runs them where TensorRT is not (their numerics, checked).
    "onnxruntime": Entry("qiedge.runtime.backends.onnx_runtime", "artifacts", "onnx", reads=("tensorrt",)),
    "coreml": Entry("qiedge.runtime.backends.coreml", "artifacts", "coreml"),
    "cuda": Entry("qiedge.runtime.backends.cuda", "model", options=("precision", "quantize")),
    "tensorrt": Entry("qiedge.runtime.backends.tensorrt", "artifacts", "tensorrt", requires="tensorrt"),
}


def backend_for(artifacts) -> str:
    """The backend that runs an artifacts directory's target here: its own where what it requires
    imports, else one that reads that target's files."""
    import importlib.util

    target = artifacts.manifest["target"]
    own = next(name for name, entry in REGISTRY.items() if entry.target == target)
    requires = REGISTRY[own].requires
    if requires is None or importlib.util.find_spec(requires) is not None:
        return own
    return next(name for name, entry in REGISTRY.items() if target in entry.reads)


def open_backend(name: str, model=None, artifacts=None, threads: int | None = None, **options) -> Backend:
    """The backend `name` over a model directory and/or an artifacts store, as it needs; `options`
    (precision, ...) go to the backends that take them."""
    if name not in REGISTRY:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(REGISTRY)}")
    entry = REGISTRY[name]
    if {"model": model, "artifacts": artifacts}[entry.needs] is None:
        raise ValueError(f"the {name} backend {NEEDS[entry.needs]}")
    if entry.needs == "artifacts" and artifacts.manifest["target"] not in (entry.target, *entry.reads):
        raise ValueError(
            f"{artifacts.path} holds {artifacts.manifest['target']} artifacts; the {name} backend runs "
            f"{entry.target} ones: use --backend {backend_for(artifacts)}"
        )
    given = {k: v for k, v in options.items() if v is not None}
    for option in sorted(set(given) - set(entry.options)):
        takers = [n for n, e in REGISTRY.items() if option in e.options]
        raise ValueError(f"the {name} backend takes no --{option}; {' / '.join(takers) or 'no backend'} does")
    return importlib.import_module(entry.module).open(name, model, artifacts, threads, **given)
