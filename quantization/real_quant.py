"""Real FP8 and INT8 matmuls for the recipes' layers, where the fake-quant model only emulates them.

Each quantized Linear keeps its weight quantized as the recipe plans it (scales.py: the same
SmoothQuant factors, weight scales and calibrated activation scale as the fake-quant model and
the Q/DQ graphs), quantizes its input with the static activation scale, and multiplies on the
low-precision units: `torch._scaled_mm` for FP8 (per-tensor activation x per-channel weight
scales), `torch._int_mm` for INT8 (int32 sums, scaled after). Both run on CUDA, and on the CPU
too, which is how CI checks the packing and the arithmetic against the fake-quant model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .calibrate import calibrate, linear_layers
from .fake_quant import layer_quants, replace_linears
from .recipe import QMAX, Recipe
from .scales import LayerQuant

# cuBLASLt's FP8 and int8 kernels need the inner and output dims in multiples of 16 (FP8) or 8.
ALIGN = {"fp8": 16, "int8": 8}
INT_MM_MIN_ROWS = 17  # torch._int_mm takes more than 16 rows


def fits(linear: nn.Linear, fmt: str) -> bool:
    return linear.in_features % ALIGN[fmt] == 0 and linear.out_features % ALIGN[fmt] == 0


class RealQuantLinear(nn.Module):
    """A Linear (no bias) with its weight stored quantized and its matmul in FP8 or INT8.

    The quantized weight and the float32 scales are stored as raw integer bits, so casting the
    model to bf16 (`.to(dtype)`) leaves them as they are: `_scaled_mm` takes float32 scales.
    """

    def __init__(self, linear: nn.Linear, quant: LayerQuant, fmt: str):
        super().__init__()
        if quant.act_scale is None or quant.group:
            raise ValueError(f"real {fmt} matmuls need per-channel or per-tensor weights and a static activation scale")
        quantized = quant.quantize(linear.weight, fmt)
        weight_scale = torch.from_numpy(quantized.scale).float().expand(linear.out_features).contiguous()
        self.register_buffer("weight_bits", quantized.values.view(torch.uint8 if fmt == "fp8" else torch.int8))
        self.register_buffer("weight_scale_bits", weight_scale.view(torch.int32))
        self.register_buffer("act_scale_bits", torch.tensor([quant.act_scale], dtype=torch.float32).view(torch.int32))
        smooth = None if quant.smooth is None else (1 / torch.from_numpy(quant.smooth)).float()
        self.register_buffer("inv_smooth", smooth)  # follows the model's dtype, as the activations do
        self.fmt = fmt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inv_smooth is not None:
            x = x * self.inv_smooth
        rows = x.reshape(-1, x.shape[-1])
        act_scale = self.act_scale_bits.view(torch.float32)
        weight_scale = self.weight_scale_bits.view(torch.float32)
        matmul = _fp8_matmul if self.fmt == "fp8" else _int8_matmul
        return matmul(rows, self.weight_bits, act_scale, weight_scale).reshape(*x.shape[:-1], -1)


def _fp8_matmul(rows, weight_bits, act_scale, weight_scale) -> torch.Tensor:
    q = (rows.float() / act_scale).clamp(-QMAX["fp8"], QMAX["fp8"]).to(torch.float8_e4m3fn)
    return torch._scaled_mm(
        q,
        weight_bits.view(torch.float8_e4m3fn).t(),
        scale_a=act_scale.expand(rows.shape[0], 1).contiguous(),  # row-wise: per-channel weights need it
        scale_b=weight_scale[None],
        out_dtype=rows.dtype,
    )


def _int8_matmul(rows, weight_bits, act_scale, weight_scale) -> torch.Tensor:
    q = (rows.float() / act_scale).round().clamp(-128, 127).to(torch.int8)  # QuantizeLinear: half to even
    count = q.shape[0]
    if count < INT_MM_MIN_ROWS:
        q = torch.cat([q, q.new_zeros(INT_MM_MIN_ROWS - count, q.shape[1])])
    sums = torch._int_mm(q, weight_bits.t())[:count]
    return (sums.float() * (act_scale * weight_scale)).to(rows.dtype)


def real_quantized(transformer: nn.Module, quants: dict[str, LayerQuant], fmt: str) -> tuple[nn.Module, list[str]]:
    """The transformer with each planned layer that the kernels take (`fits`) on real `fmt`
    matmuls, in place; and the planned layers left in high precision because they do not fit."""
    linears = dict(transformer.named_modules())
    unfit = [name for name in quants if not fits(linears[name], fmt)]
    taken = {name: q for name, q in quants.items() if name not in unfit}
    return replace_linears(transformer, taken, lambda linear, q: RealQuantLinear(linear, q, fmt)), unfit


def quantizer(model_path, recipe: Recipe, log=print, device: str = "cuda"):
    """For the cuda backend: a function that loads the fp32 transformer (through the loader it is
    given) and puts it on real matmuls in the recipe's format, with its layers and scales,
    calibrated as `qiedge quantize` calibrates but on `device` (or read back from the cache)."""
    fmt = recipe.format

    def quantize(load: Callable[[], nn.Module]) -> nn.Module:
        calibration = calibrate(model_path, recipe, log, device)  # before the weights take the device
        transformer = load()
        layers = recipe.quantized_layers(list(linear_layers(transformer)), len(transformer.transformer_blocks))
        quantized, unfit = real_quantized(transformer, layer_quants(transformer, recipe, calibration, layers), fmt)
        if unfit:
            log(f"{len(unfit)} layer(s) stay bf16: their dims are not multiples of {ALIGN[fmt]}")
        return quantized

    return quantize


class OnHost:
    """A device session whose outputs come back as NumPy, for the host-side accuracy checks."""

    def __init__(self, session, arrays):
        self.session, self.arrays = session, arrays

    def run(self, feeds: dict) -> dict:
        return {name: self.arrays.get(value) for name, value in self.session.run(feeds).items()}


def on_device(judge, model_path, quants: dict[str, LayerQuant], fmt: str, device: str = "cuda", encode=None) -> dict:
    """The judge's figures for the same plan on real `fmt` matmuls (the cuda backend: bf16
    around them), next to the fake-quant model's emulation; the prompts encoded by `encode` (a
    weight-only quantized encoder, emulated on the host) where one is given."""
    from qiedge.reference_model.model_dir import ModelDir
    from qiedge.runtime.backends.cuda import CudaBackend

    backend = CudaBackend(ModelDir.open(model_path), fmt, lambda load: real_quantized(load(), quants, fmt)[0], device)
    prefix, step = (OnHost(backend.load(c), backend.arrays) for c in ("transformer_prefix", "transformer_step"))
    name = torch.cuda.get_device_name() if backend.device.type == "cuda" else str(backend.device)
    return {
        "device": name,
        "arithmetic": f"{fmt} matmuls, bf16 elsewhere",
        "per_step": judge.per_step_of(prefix, step, encode),
        **judge.image_figures(judge.images_of(prefix, step, encode)),
    }
