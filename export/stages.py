"""Export as named stages. A target (ONNX today; Core ML and TensorRT are to be siblings) is an
ordered list of stages, each a pass and the check that must hold after it; rewrites from outside
the target, such as quantization's Q/DQ insertion, are passes spliced in before the target saves.
A failing stage is named with its component, and nothing later runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from .specs import ComponentSpec, ModelConfigs

# A weight hook: for a checkpoint key, None, or a function from its fp32 [out, in] weight to the
# stored one (in its own dtype), applied as the weights stream into the target's files.
WeightHook = Callable[[str], Callable[[np.ndarray], np.ndarray] | None]


class ExportError(RuntimeError):
    pass


@dataclass
class GraphJob:
    """One component on its way through a target's stages."""

    spec: ComponentSpec
    configs: ModelConfigs
    source: Any  # export/sources.py: where the weights stream from
    precision: torch.dtype
    folder: Path  # the component's artifacts folder
    extras: dict[str, np.ndarray]  # tensors the reference computes from its config
    shared: dict  # what the target keeps across the graphs of one folder (their weights file)
    weight_hooks: list[WeightHook] = field(default_factory=list)
    graph: Any = None  # the target's program or model while it is built
    path: Path | None = None  # the saved file

    @property
    def dropped_tokens(self) -> int:
        """The chat template's system-turn tokens, from the artifacts' own tokenizer: the encoder
        reads them, the transformer does not, so a prompt of n tokens feeds the encoder n + this."""
        from qiedge.core.artifacts import TOKENIZER
        from qiedge.core.tokenizer import PromptTokenizer

        return PromptTokenizer(self.folder.parent / TOKENIZER).drop

    def weight_transform(self, key: str):
        """The first hook's replacement for this key, if any hook has one."""
        return next((replace for hook in self.weight_hooks if (replace := hook(key)) is not None), None)


def _no_check(job: GraphJob) -> None:
    pass


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[GraphJob], None]
    check: Callable[[GraphJob], None] = _no_check


@dataclass(frozen=True)
class Pass(Stage):
    """A rewrite from outside the target, for the components it applies to."""

    applies_to: Callable[[ComponentSpec], bool] = lambda spec: True
    weights: WeightHook | None = None  # replaces weights as they stream (before the graph rewrite)
    entry: dict = field(default_factory=dict)  # fields it sets in those components' manifest entries


class Target(Protocol):
    name: str
    tools: tuple[str, ...]  # packages whose versions the manifest records
    default_precision: str
    precisions: tuple[str, ...]  # the float precisions it exports
    components: tuple[str, ...] | None  # exported by default (None: every spec)
    unsupported: dict[str, str]  # components it cannot export, and why

    def configured(self, **options) -> Target: ...  # the target with its own options set

    # Refuses what it can tell will fail before the first component converts, and may seed each
    # folder's shared state (`shared`: folder -> dict; Core ML: its chunk plan).
    def prepare(self, configs: ModelConfigs, components: Sequence[str], precision: str, shared: dict) -> None: ...

    def stages(self, passes: Sequence[Pass]) -> list[Stage]: ...

    def entry(self, job: GraphJob) -> dict: ...  # target fields of the manifest entry (opset, ...)

    def files(self, root: Path, entry: dict) -> list[Path]: ...  # every file a manifest entry needs, hashed

    def manifest(self) -> dict: ...  # the target's fields at the manifest's top level

    def finish(self, root: Path, manifest: dict) -> None: ...  # files beside the graphs, once all are in


def configure(target: str, defaults, options: dict):
    """`defaults` (a target's options dataclass) with `options` set; another target's are refused."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(defaults)}
    unknown = sorted(set(options) - known)
    if unknown:
        flags = ", ".join("--" + name.replace("_", "-") for name in unknown)
        raise ValueError(f"the {target} target takes no {flags}")
    chosen = dataclasses.replace(defaults, **options)
    chosen.check()
    return chosen


def run_stages(job: GraphJob, stages: Sequence[Stage]) -> None:
    for stage in stages:
        try:
            stage.run(job)
            stage.check(job)
        except ExportError:
            raise
        except Exception as e:
            raise ExportError(f"{job.spec.name}: stage '{stage.name}' failed: {e}") from e
