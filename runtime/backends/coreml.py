"""The coreml backend: Core ML packages, verified against the manifest's hashes before they load.

On macOS, Core ML itself runs them (`MLModel`, with the compute units they were exported for).
Elsewhere the saved ML Program is executed op by op in NumPy (runtime/coreml_program.py), with
fp16 rounding wherever the program computes in fp16: slow, but the same program, which is what
lets the parity checks and `generate` run on Linux.
"""

from __future__ import annotations

import numpy as np
from qiedge.core.artifacts import ArtifactError, Artifacts
from qiedge.core.coreml import can_predict, coremltools, numpy_dtype

from ..arrays import HOST
from ..bucketed import BucketedSession
from ..chained import ChainedSession
from . import Session


class CoreMLBackend:
    name = "coreml"
    arrays = HOST

    def __init__(self, artifacts: Artifacts, native: bool | None = None):
        self.artifacts = artifacts
        self.native = can_predict() if native is None else native
        self._programs = {}  # package path -> loaded program, shared by the functions it holds

    @property
    def executor(self) -> str:
        return "Core ML" if self.native else "NumPy execution of the saved ML Program"

    def load(self, component: str) -> Session:
        """The component's package, or its chain of chunk packages, behind one session."""
        path = self.artifacts.verify(component)
        entry = self.artifacts.component(component)
        if "chunks" not in entry:
            return self._session(component, path, entry, entry)
        sessions = [
            (self._session(component, self.artifacts.graph(component, chunk["graph"]), chunk, entry), chunk)
            for chunk in entry["chunks"]
        ]
        return ChainedSession(sessions, [t["name"] for t in entry["outputs"]])

    def _session(self, component: str, path, graph: dict, entry: dict) -> Session:
        """One package's functions behind a session; `graph` is its manifest entry (or chunk's)."""
        dtypes = {t["name"]: numpy_dtype(t["dtype"]) for t in graph["inputs"]}
        run = self._native(path, entry) if self.native else self._interpreted(path)

        def run_function(function: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            outputs = run(function, {n: np.ascontiguousarray(v, dtype=dtypes[n]) for n, v in feeds.items()})
            return {n: np.asarray(v, dtype=np.float32) for n, v in outputs.items()}

        return BucketedSession(component, graph, run_function)

    def _interpreted(self, path):
        from ..coreml_program import Program

        if path not in self._programs:
            try:
                self._programs[path] = Program.load(path)
            except Exception as e:  # a corrupt package fails inside coremltools' reader
                raise ArtifactError(f"{path} cannot be read as an ML Program ({type(e).__name__}: {e})") from None
        return self._programs[path].run

    def _native(self, path, entry):
        ct = coremltools()
        units = getattr(ct.ComputeUnit, entry["compute_units"].upper())
        models = {}

        def run(function: str, feeds):
            if function not in models:
                name = None if function == "main" else function
                models[function] = ct.models.MLModel(str(path), compute_units=units, function_name=name)
            return models[function].predict(feeds)

        return run

    def prompt_encoder(self, facts):
        from qiedge.core.tokenizer import PromptTokenizer

        from ..sampler import GraphPromptEncoder

        return GraphPromptEncoder(
            PromptTokenizer(facts.tokenizer_json),
            self.load("condition_encoder"),
            facts.vision,
            lambda: self.load("vision_encoder"),
        )


def open(name: str, model, artifacts: Artifacts, threads: int | None) -> CoreMLBackend:
    return CoreMLBackend(artifacts)
