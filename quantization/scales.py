"""From calibration statistics and a recipe to each layer's quantization: SmoothQuant factors,
weight scales, activation scale, and the quantized weight. Shared by the fake-quant torch model
and the ONNX Q/DQ graphs, so both compute exactly the same thing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .calibrate import Calibration
from .recipe import QMAX, Recipe


@dataclass
class LayerQuant:
    smooth: np.ndarray | None  # [in]: x is divided by it, the weight's columns multiplied
    act_scale: float | None  # None: weight-only
    granularity: str = "per-channel"  # per-channel, per-tensor or group:G
    weight_scale: np.ndarray | None = None  # [out], [1] or [out, in/G]; set from the weight by `weight()`

    @property
    def group(self) -> int | None:
        return int(self.granularity.split(":")[1]) if self.granularity.startswith("group:") else None

    def weight(self, w: torch.Tensor, fmt: str) -> torch.Tensor:
        """The quantized weight [out, in] (int8 holding int8/int4 values, or float8_e4m3fn);
        records its scales."""
        w = w.detach().float()
        w = w * torch.from_numpy(self.smooth)[None] if self.smooth is not None else w
        if self.group:
            blocks = w.unflatten(1, (-1, self.group))  # [out, in/G, G]
            scale = blocks.abs().amax(-1).clamp(min=1e-8) / QMAX[fmt]
            self.weight_scale = scale.numpy().astype(np.float32)
            return (blocks / scale[..., None]).round().clamp(-8, 7).flatten(1).to(torch.int8)
        w_max = w.abs().amax(1) if self.granularity == "per-channel" else w.abs().amax().reshape(1)
        self.weight_scale = (w_max.clamp(min=1e-8) / QMAX[fmt]).numpy().astype(np.float32)
        q = w / torch.from_numpy(self.weight_scale)[:, None]
        if fmt == "int8":
            return q.round().clamp(-127, 127).to(torch.int8)
        return q.clamp(-QMAX["fp8"], QMAX["fp8"]).to(torch.float8_e4m3fn)

    def dequantized(self, w: torch.Tensor, fmt: str) -> torch.Tensor:
        """The weight the quantized graph multiplies by: [out, in] float."""
        q = self.weight(w, fmt).float()
        scale = torch.from_numpy(self.weight_scale)
        if self.group:
            return (q.unflatten(1, (-1, self.group)) * scale[..., None]).flatten(1)
        return q * scale[:, None]


def layer_quant(name: str, weight: torch.Tensor, calibration: Calibration | None, recipe: Recipe) -> LayerQuant:
    if recipe.activations == "none":
        return LayerQuant(smooth=None, act_scale=None, granularity=f"group:{recipe.group_size}")
    stats = calibration.layers[name]
    w = weight.detach().float()
    qmax = QMAX[recipe.format]
    smooth = None
    if recipe.smoothquant_alpha is not None:
        # Moves activation outliers into the weights: s_j = max|X_j|^a / max|W_j|^(1-a).
        a = recipe.smoothquant_alpha
        w_col = w.abs().amax(0).clamp(min=1e-5).numpy()
        x_col = np.maximum(stats.channel_absmax, 1e-5)
        smooth = (x_col**a / w_col ** (1 - a)).astype(np.float32)
        w = w * torch.from_numpy(smooth)[None]
    if recipe.percentile is not None:
        if smooth is not None:
            raise ValueError("percentile calibration is for recipes without SmoothQuant")
        act_max = stats.percentile(recipe.percentile)
    else:
        act_max = float(np.max(stats.channel_absmax / smooth)) if smooth is not None else stats.absmax
    return LayerQuant(smooth=smooth, act_scale=max(act_max, 1e-8) / qmax, granularity=recipe.weights)


def fake_quant(x: torch.Tensor, scale: float, fmt: str) -> torch.Tensor:
    """Quantize-dequantize as ONNX QuantizeLinear/DequantizeLinear do (round half to even, saturate)."""
    q = x.float() / scale
    if fmt == "int8":
        q = q.round().clamp(-128, 127)
    else:
        q = q.clamp(-QMAX["fp8"], QMAX["fp8"]).to(torch.float8_e4m3fn).float()
    return (q * scale).to(x.dtype)
