"""The cuda backend: the PyTorch reference on an NVIDIA GPU, its arrays kept on the device.

- bf16 weights and activations; each transformer block compiled (`torch.compile`), so inductor
  fuses the norms, RoPE and gates around the matmuls;
- the step attends without a mask (so SDPA may take flash attention) whenever no prefix key is
  padded: one prompt, or a batch of prompts of one length; with the boolean mask otherwise;
- sessions take NumPy arrays or their own tensors and return tensors on the device: the sampler
  keeps latents and the prefix's K/V there (runtime/arrays.py). The K/V stay bf16; what the
  sampler computes with (velocity, image) comes back fp32;
- fp8 / int8: the transformer's quantized layers on real FP8 or INT8 matmuls, through a
  `quantize` function the caller passes (quantization/real_quant.py: the shipped recipe's layers
  and calibrated scales). It is given a loader of the fp32 transformer, so a calibration can
  have the device before those weights take it, and returns the transformer to cast to bf16.

`device` and `compile` exist for CI, which runs the same sessions on the CPU; `dtype` for
calibration, which runs the fp32 reference on the GPU (quantization/calibrate.py).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..arrays import HOST
from . import Session

PRECISIONS = ("bf16", "fp8", "int8")
# The compute capability whose tensor cores multiply each precision: bf16 from Ampere, int8
# from Turing, FP8 from Ada and Hopper.
CAPABILITY = {"bf16": (8, 0), "int8": (7, 5), "fp8": (8, 9)}
BF16 = CAPABILITY["bf16"]  # everything around the quantized matmuls runs in bf16
RECOMPILES = 64


class DeviceArrays:
    """torch tensors on one device."""

    def __init__(self, device):
        self.device = device

    def put(self, value: np.ndarray):
        import torch

        return torch.from_numpy(np.ascontiguousarray(value)).to(self.device)

    def get(self, value) -> np.ndarray:
        return value.float().cpu().numpy() if hasattr(value, "cpu") else np.asarray(value)

    def finite(self, value) -> bool:
        import torch

        if not isinstance(value, torch.Tensor):
            return HOST.finite(value)
        return not value.is_floating_point() or bool(torch.isfinite(value).all())

    def concat(self, values: list, axis: int):
        import torch

        return torch.cat(values, dim=axis)


class DeviceSession:
    def __init__(self, module, spec, dtype, device, keep_dtype: bool):
        self.module, self.spec, self.dtype, self.device = module, spec, dtype, device
        self.keep_dtype = keep_dtype  # outputs another graph reads (K/V) stay in the model's dtype
        from torch.utils.weak import WeakIdKeyDictionary

        self._unpadded = WeakIdKeyDictionary()  # key_valid tensor -> no key padded (one sync each)

    def run(self, feeds: dict) -> dict:
        import torch
        from qiedge.export.specs import torch_dtype

        inputs = {t.name: self._tensor(feeds[t.name], torch_dtype(t.dtype, self.dtype)) for t in self.spec.inputs}
        if self.spec.name == "transformer_step" and self._all_valid(inputs["key_valid"]):
            inputs["key_valid"] = None
        with torch.no_grad():
            outputs = self.module(**inputs)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return {
            t.name: o if self.keep_dtype or not o.is_floating_point() else o.float()
            for t, o in zip(self.spec.outputs, outputs)
        }

    def _tensor(self, value, dtype):
        import torch

        if not isinstance(value, torch.Tensor):
            value = torch.from_numpy(np.ascontiguousarray(value))
        return value.to(self.device, dtype)

    def _all_valid(self, key_valid) -> bool:
        if key_valid not in self._unpadded:
            self._unpadded[key_valid] = bool(key_valid.all())
        return self._unpadded[key_valid]


class CudaBackend:
    name = "cuda"

    def __init__(
        self,
        model,
        precision: str = "bf16",
        quantize: Callable | None = None,
        device: str = "cuda",
        compile: bool | None = None,
        dtype=None,
    ):
        import torch

        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: the cuda backend runs {', '.join(PRECISIONS)}")
        if precision != "bf16" and quantize is None:
            raise ValueError(f"{precision} needs the quantization recipe's scales (quantization/real_quant.py)")
        if device == "cuda":
            _check_gpu(precision)
        self.model, self.precision, self.quantize = model, precision, quantize
        self.device, self.dtype = torch.device(device), dtype or torch.bfloat16
        self.compile = self.device.type == "cuda" if compile is None else compile
        self.arrays = DeviceArrays(self.device)
        self._modules = {}
        if quantize is not None:  # first, while the device is empty: calibration may run fp32 there
            self.reference("transformer")

    def reference(self, weights: str):
        """The reference module of one weights folder on the device, in the backend's dtype (shared
        by sessions)."""
        if weights not in self._modules:
            self._modules[weights] = self._load(weights)
        return self._modules[weights]

    def _load(self, weights: str):
        import torch

        m, device, dtype = self.model, str(self.device), self.dtype
        if weights == "text_encoder":
            return m.load_condition_encoder(dtype, device).model.model
        if weights == "vae":
            return m.load_vae(dtype, device).eval()
        if self.quantize is None:
            module = m.load_transformer(dtype, device)
        else:  # scales from the fp32 weights, as the Q/DQ graphs take them
            module = self.quantize(lambda: m.load_transformer(torch.float32, device)).to(device, dtype)
        if self.compile:
            # Prefix and step, masked and not, kept and quantized blocks: more graphs than
            # dynamo's default of 8 before it falls back to eager without a word.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILES)
            for block in module.transformer_blocks:
                block.compile()  # one graph for every block; shapes go dynamic on the first recompile
        return module.eval()

    def load(self, component: str) -> Session:
        from qiedge.export.specs import SPECS

        spec = SPECS[component]
        module = spec.wrapper(self.reference(spec.weights)).eval()
        return DeviceSession(module, spec, self.dtype, self.device, keep_dtype=component == "transformer_prefix")

    def prompt_encoder(self, facts):
        """transformers' processor and model (text and condition images), on the device."""
        return self.model.load_condition_encoder(self.dtype, str(self.device))


def _check_gpu(precision: str) -> None:
    import torch

    if not torch.cuda.is_available():
        raise ValueError("the cuda backend needs an NVIDIA GPU with a CUDA build of PyTorch; none is visible here")
    capability = torch.cuda.get_device_capability()
    needed = max(CAPABILITY[precision], BF16)
    if capability < needed:
        need = ".".join(map(str, needed))
        raise ValueError(
            f"{torch.cuda.get_device_name()} (compute capability {capability[0]}.{capability[1]}) cannot run "
            f"{precision}: it needs {need} or newer (bf16 from 8.0, FP8 tensor cores from 8.9)"
        )


def open(name: str, model, artifacts, threads: int | None, precision: str = "bf16", quantize=None) -> CudaBackend:
    return CudaBackend(model, precision, quantize)
