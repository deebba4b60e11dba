"""The onnxruntime backend: exported graphs on ONNX Runtime's CPU provider, verified against the
manifest's hashes before they load; int8 graphs on kernels that are exact on this CPU, weight-only
ones with float activations."""

from __future__ import annotations

import numpy as np
from qiedge.core.artifacts import ArtifactError, Artifacts

from .. import ort_int8
from ..arrays import HOST
from . import Session

# ONNX Runtime fuses a weight-only DequantizeLinear -> MatMul into MatMulNBits, whose default
# accuracy level (4) quantizes the activations to int8 per block: not what the graph says, nor what
# the recipe measured or TensorRT computes (relative L2 5e-3 on a 3072 x 3072 matmul, against 1e-6
# at level 1). Level 1 computes in fp32, at 1.25x the time for int4 weights there, 3.6x for int8.
FLOAT_ACTIVATIONS = {"session.qdq_matmulnbits_accuracy_level": "1"}


class OnnxRuntimeSession:
    def __init__(self, session):
        self.session = session
        self.input_types = {i.name: i.type for i in session.get_inputs()}
        self.output_names = [o.name for o in session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # fp16 graphs take fp16 floats; everything comes back as fp32 for the host.
        cast = {
            n: v.astype(np.float16) if self.input_types[n] == "tensor(float16)" and v.dtype == np.float32 else v
            for n, v in feeds.items()
            if n in self.input_types
        }
        outputs = self.session.run(self.output_names, cast)
        return {n: o.astype(np.float32) if o.dtype == np.float16 else o for n, o in zip(self.output_names, outputs)}


class OnnxRuntimeBackend:
    name = "onnxruntime"
    arrays = HOST

    def __init__(
        self,
        artifacts: Artifacts,
        threads: int | None = None,
        providers: list[str] | None = None,
        arena: bool = True,
    ):
        self.artifacts, self.threads, self.arena = artifacts, threads, arena
        self.providers = providers or ["CPUExecutionProvider"]

    def load(self, component: str) -> Session:
        import onnxruntime as ort

        path = self.artifacts.verify(component)
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        # The arena keeps freed blocks for reuse (faster); without it memory goes back as it is freed.
        options.enable_cpu_mem_arena = self.arena
        options.log_severity_level = 3
        config = FLOAT_ACTIVATIONS | ort_int8.session_config(self.artifacts.component(component)["precision"])
        for key, value in config.items():
            options.add_session_config_entry(key, value)
        try:
            session = ort.InferenceSession(str(path), options, providers=self.providers)
        except Exception as e:  # onnxruntime's own errors do not say which artifact
            raise ArtifactError(f"{component}: ONNX Runtime cannot load {path} ({e})") from None
        _check_interface(component, session, self.artifacts.component(component))
        return OnnxRuntimeSession(session)

    def prompt_encoder(self, facts):
        """The exported language model behind the tokenizer, and the vision tower's graph for editing."""
        from qiedge.core.tokenizer import PromptTokenizer

        from ..sampler import GraphPromptEncoder

        return GraphPromptEncoder(
            PromptTokenizer(facts.tokenizer_json),
            self.load("condition_encoder"),
            facts.vision,
            lambda: self.load("vision_encoder"),
        )


def _check_interface(component: str, session, entry: dict) -> None:
    """The graph takes and gives what the manifest declares (a graph swapped for another with the
    hashes rewritten still fails here, before it draws anything)."""
    for kind, found in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
        declared, actual = [t["name"] for t in entry[kind]], [v.name for v in found]
        if sorted(declared) != sorted(actual):
            raise ArtifactError(f"{component}: the graph's {kind} {actual} are not the manifest's {declared}")


def open(name: str, model, artifacts: Artifacts, threads: int | None) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(artifacts, threads)
