"""From calibration statistics and a recipe to each layer's quantization: SmoothQuant factors,
weight scales, activation scale, and the quantized weight. Shared by the fake-quant torch model
and the ONNX Q/DQ graphs, so both compute exactly the same thing."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from .calibrate import Calibration
from .recipe import QMAX, Recipe


@dataclass(frozen=True)
class QuantizedWeight:
    values: torch.Tensor  # [out, in]: int8 holding int8/int4 values, or float8_e4m3fn
    scale: np.ndarray  # [out], [1] or [out, in/G], float32


@dataclass(frozen=True)
class LayerQuant:
    smooth: np.ndarray | None  # [in]: x is divided by it, the weight's columns multiplied
    act_scale: float | None  # None: weight-only, or dynamic
    granularity: str = "per-channel"  # per-channel, per-tensor or group:G
    dynamic: bool = False  # activations quantized per tensor at run time (uint8, asymmetric)
    # [out], [1] or [out, in/G]: computed once from the weight by `layer_quant`; None where the
    # weight is not at hand when the plan is made (the 7B export), so it comes from the weight as it streams.
    weight_scale: np.ndarray | None = None

    @property
    def group(self) -> int | None:
        return int(self.granularity.split(":")[1]) if self.granularity.startswith("group:") else None

    def smoothed(self, w: torch.Tensor) -> torch.Tensor:
        w = w.detach().float()
        return w * torch.from_numpy(self.smooth).to(w.device)[None] if self.smooth is not None else w

    def scale_of(self, w: torch.Tensor, fmt: str) -> np.ndarray:
        """The weight scales of a smoothed weight [out, in]."""
        if self.group:
            w_max = w.unflatten(1, (-1, self.group)).abs().amax(-1)  # [out, in/G]
        else:
            w_max = w.abs().amax(1) if self.granularity == "per-channel" else w.abs().amax().reshape(1)
        return (w_max.clamp(min=1e-8) / QMAX[fmt]).cpu().numpy().astype(np.float32)

    def quantize(self, w: torch.Tensor, fmt: str) -> QuantizedWeight:
        """The weight [out, in] quantized, and the scales it was quantized with."""
        w = self.smoothed(w)
        scale = self.weight_scale if self.weight_scale is not None else self.scale_of(w, fmt)
        on_device = torch.from_numpy(scale).to(w.device)
        if self.group:
            blocks = w.unflatten(1, (-1, self.group)) / on_device[..., None]  # [out, in/G, G]
            return QuantizedWeight(blocks.round().clamp(-8, 7).flatten(1).to(torch.int8), scale)
        q = w / on_device[:, None]
        if fmt == "int8":
            return QuantizedWeight(q.round().clamp(-127, 127).to(torch.int8), scale)
        return QuantizedWeight(q.clamp(-QMAX["fp8"], QMAX["fp8"]).to(torch.float8_e4m3fn), scale)

    def dequantized(self, w: torch.Tensor, fmt: str) -> torch.Tensor:
        """The weight the quantized graph multiplies by: [out, in] float."""
        quantized = self.quantize(w, fmt)
        q, scale = quantized.values.float(), torch.from_numpy(quantized.scale)
        if self.group:
            return (q.unflatten(1, (-1, self.group)) * scale[..., None]).flatten(1)
        return q * scale[:, None]


def layer_quant(name: str, weight: torch.Tensor, calibration: Calibration | None, recipe: Recipe) -> LayerQuant:
    """One layer's quantization from its weight, its calibration statistics and the recipe."""
    quant = _activation_quant(name, weight, calibration, recipe)
    return replace(quant, weight_scale=quant.scale_of(quant.smoothed(weight), recipe.format))


def _activation_quant(name: str, weight: torch.Tensor, calibration: Calibration | None, recipe: Recipe) -> LayerQuant:
    if recipe.activations == "none":
        return LayerQuant(smooth=None, act_scale=None, granularity=f"group:{recipe.group_size}")
    if recipe.activations == "dynamic":
        return LayerQuant(smooth=None, act_scale=None, granularity=recipe.weights, dynamic=True)
    stats = calibration.layers[name]
    w = weight.detach().float()
    qmax = QMAX[recipe.format]
    smooth = None
    if recipe.smoothquant_alpha is not None:
        # Moves activation outliers into the weights: s_j = max|X_j|^a / max|W_j|^(1-a).
        a = recipe.smoothquant_alpha
        w_col = w.abs().amax(0).clamp(min=1e-5).cpu().numpy()
        x_col = np.maximum(stats.channel_absmax, 1e-5)
        smooth = (x_col**a / w_col ** (1 - a)).astype(np.float32)
    if recipe.percentile is not None:
        if smooth is not None:
            raise ValueError("percentile calibration is for recipes without SmoothQuant")
        act_max = stats.percentile(recipe.percentile)
    else:
        act_max = float(np.max(stats.channel_absmax / smooth)) if smooth is not None else stats.absmax
    return LayerQuant(smooth=smooth, act_scale=max(act_max, 1e-8) / qmax, granularity=recipe.weights)


def attention_scales(calibration: Calibration, modules: list[str]) -> dict[str, tuple[float, float, float]]:
    """FP8 scales of q, k and v (as the attention's matmuls read them) for each of `modules`."""
    return {name: tuple(max(m, 1e-8) / QMAX["fp8"] for m in calibration.attention[name]) for name in modules}


def dynamic_fake_quant(x: torch.Tensor) -> torch.Tensor:
    """Quantize-dequantize as ONNX's DynamicQuantizeLinear does: uint8 over the range of the whole
    tensor widened to hold 0, zero point rounded half to even, then back to float."""
    xf = x.float()
    low, high = xf.min().clamp(max=0), xf.max().clamp(min=0)
    scale = ((high - low) / 255).clamp(min=torch.finfo(torch.float32).tiny)
    zero = (-low / scale).round().clamp(0, 255)
    q = ((xf / scale).round() + zero).clamp(0, 255)
    return ((q - zero) * scale).to(x.dtype)


def fake_quant(x: torch.Tensor, scale: float, fmt: str) -> torch.Tensor:
    """Quantize-dequantize as ONNX QuantizeLinear/DequantizeLinear do (round half to even, saturate)."""
    q = x.float() / scale
    if fmt == "int8":
        q = q.round().clamp(-128, 127)
    else:
        q = q.clamp(-QMAX["fp8"], QMAX["fp8"]).to(torch.float8_e4m3fn).float()
    return (q * scale).to(x.dtype)
