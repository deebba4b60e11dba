"""The torch backends: the PyTorch reference behind the same sessions, straight from a model
directory; eager fp32, compiled fp32, or compiled with bf16 matrix work."""

from __future__ import annotations

import numpy as np

from ..arrays import HOST
from . import Session

# name -> (compiled by inductor with frozen weights, matrix work in bf16 under autocast)
PATHS = {"torch": (False, False), "torch-compile": (True, False), "torch-bf16": (True, True)}


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

    arrays = HOST

    def __init__(self, model, name: str = "torch"):
        if name not in PATHS:
            raise ValueError(f"unknown torch path {name!r}; choose one of {', '.join(PATHS)}")
        self.model, self.name = model, name
        self.compiled, self.autocast = PATHS[name]
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

    def prompt_encoder(self, facts):
        """transformers' processor and model: text and condition images."""
        return self.model.load_condition_encoder()

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


def open(name: str, model, artifacts, threads: int | None) -> TorchBackend:
    return TorchBackend(model, name)
