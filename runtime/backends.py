"""One Backend protocol: `load(component) -> Session`, `Session.run(feeds) -> outputs`.

Sessions take and return NumPy arrays named as in the export specs, whatever runs them, so the
sampler and the parity checks serve every backend. Each component may use a different backend.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from . import ort_int8
from .artifacts import Artifacts
from .auto import TORCH_PATHS


class Session(Protocol):
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class Backend(Protocol):
    name: str

    def load(self, component: str) -> Session: ...


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

    def __init__(self, artifacts: Artifacts, threads: int | None = None, providers: list[str] | None = None):
        self.artifacts, self.threads = artifacts, threads
        self.providers = providers or ["CPUExecutionProvider"]

    def load(self, component: str) -> Session:
        import onnxruntime as ort

        path = self.artifacts.verify(component)
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        options.log_severity_level = 3
        for key, value in ort_int8.session_config(self.artifacts.component(component)["precision"]).items():
            options.add_session_config_entry(key, value)
        return OnnxRuntimeSession(ort.InferenceSession(str(path), options, providers=self.providers))


class TorchSession:
    def __init__(self, module, spec, autocast: bool):
        self.module, self.spec, self.autocast = module, spec, autocast

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch
        from qiedge.export.specs import torch_dtype

        inputs = {
            t.name: torch.from_numpy(np.ascontiguousarray(feeds[t.name])).to(torch_dtype(t.dtype, torch.float32))
            for t in self.spec.inputs
        }
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            outputs = self.module(**inputs)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return {t.name: o.float().numpy() for t, o in zip(self.spec.outputs, outputs)}


class TorchBackend:
    """The PyTorch reference behind the same sessions, straight from a model directory.

    `torch` is the eager fp32 reference. `torch-compile` compiles it (inductor fuses the norms,
    RoPE and gates around the matmuls). `torch-bf16` also runs the matrix work in bf16 under
    autocast: fp32 weights, the residual stream kept fp32, which keeps it far closer to the fp32
    reference than casting the whole model to bf16 (and is faster too) where bf16 is native.
    """

    def __init__(self, model, name: str = "torch"):
        if name not in TORCH_PATHS:
            raise ValueError(f"unknown torch path {name!r}; choose one of {', '.join(TORCH_PATHS)}")
        self.model, self.name = model, name
        self.compiled, self.autocast = TORCH_PATHS[name]
        self._modules = {}

    def reference(self, weights: str):
        """The loaded reference module behind every session of one weights folder (shared)."""
        if weights not in self._modules:
            load = {
                "transformer": self.model.load_transformer,
                "vae": self.model.load_vae,
                "text_encoder": lambda: self.model.load_condition_encoder().model.model,
            }[weights]
            self._modules[weights] = load()
        return self._modules[weights]

    def load(self, component: str) -> Session:
        import torch
        from qiedge.export.specs import SPECS

        spec = SPECS[component]
        module = spec.wrapper(self.reference(spec.weights)).eval()
        if self.compiled and component != "condition_encoder":
            import torch._inductor.config as inductor

            inductor.freezing = True
            module = torch.compile(module, dynamic=False)
        return TorchSession(module, spec, autocast=self.autocast)
