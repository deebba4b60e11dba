"""The fake-quant torch transformer: every quantized Linear becomes smooth -> Q/DQ -> matmul with
the dequantized weight, and every FP8 attention Q/DQ around both of its matmuls, the same
arithmetic the Q/DQ ONNX graph does, for fast evaluation."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .calibrate import Calibration
from .recipe import Recipe
from .scales import LayerQuant, attention_scales, dynamic_fake_quant, fake_quant, layer_quant


class QuantLinear(nn.Module):
    def __init__(self, linear: nn.Linear, quant: LayerQuant, fmt: str):
        super().__init__()
        if linear.bias is not None:  # no quantized layer of either model has one
            raise ValueError("cannot quantize a Linear with a bias: the Q/DQ graphs carry none")
        self.register_buffer("weight", quant.dequantized(linear.weight, fmt))
        smooth = quant.smooth
        self.register_buffer("inv_smooth", None if smooth is None else 1 / torch.from_numpy(smooth))
        self.act_scale, self.dynamic, self.fmt = quant.act_scale, quant.dynamic, fmt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inv_smooth is not None:
            x = x * self.inv_smooth
        if self.act_scale is not None:
            x = fake_quant(x, self.act_scale, self.fmt)
        elif self.dynamic:
            x = dynamic_fake_quant(x)
        return F.linear(x, self.weight)


def layer_quants(
    transformer: nn.Module, recipe: Recipe, calibration: Calibration, layers: list[str]
) -> dict[str, LayerQuant]:
    """Each of `layers` (Linear module names) quantized as the recipe says, from its own weight."""
    weights = dict(transformer.named_parameters())
    return {name: layer_quant(name, weights[f"{name}.weight"], calibration, recipe) for name in layers}


def attention_quants(transformer: nn.Module, recipe: Recipe, calibration: Calibration) -> dict:
    """The attention modules the recipe puts in FP8, each with its q, k, v scales (none without)."""
    return attention_scales(calibration, recipe.quantized_attention(len(transformer.transformer_blocks)))


def quantize_transformer(
    transformer: nn.Module, recipe: Recipe, calibration: Calibration, layers: list[str]
) -> nn.Module:
    """A copy of the transformer with `layers` fake-quantized."""
    return fake_quantized(transformer, layer_quants(transformer, recipe, calibration, layers), recipe.format)


def fake_quantized(
    transformer: nn.Module, quants: dict[str, LayerQuant], fmt: str, attention: dict | None = None
) -> nn.Module:
    """A copy of the transformer with each layer of `quants` fake-quantized as planned, and each
    attention module of `attention` (name -> FP8 scales of q, k, v) in FP8."""
    model = copy.deepcopy(transformer)
    for name, scales in (attention or {}).items():
        module = model.get_submodule(name)
        module.attend = fp8_attend(module, scales)  # an instance attribute over the class's method
    return replace_linears(model, quants, lambda linear, q: QuantLinear(linear, q, fmt)).eval()


def fp8_attend(module: nn.Module, scales: tuple[float, float, float]):
    """`module.attend` as the FP8 attention graph computes it: q and k each times sqrt(1/sqrt(d)),
    then q, k, v through FP8 Q/DQ into fp32 matmuls, the probabilities through FP8 at scale 1."""
    q_scale, k_scale, v_scale = scales

    def attend(q, k, v, mask):
        root = q.shape[-1] ** -0.25
        q, k = fake_quant(q * root, q_scale, "fp8").float(), fake_quant(k * root, k_scale, "fp8").float()
        scores = q @ k.transpose(-1, -2)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = fake_quant(torch.softmax(scores, -1).nan_to_num(0.0), 1.0, "fp8")
        out = (probs @ fake_quant(v, v_scale, "fp8").float()).to(v.dtype)
        return module.to_out[0](out.transpose(1, 2).flatten(2))

    return attend


def replace_linears(model: nn.Module, quants: dict[str, LayerQuant], make) -> nn.Module:
    """The model with each Linear named in `quants` replaced by `make(linear, its quant)`, in place."""
    for name, planned in quants.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = getattr(parent, child) if not child.isdigit() else parent[int(child)]
        quant = make(linear, planned)
        if child.isdigit():
            parent[int(child)] = quant
        else:
            setattr(parent, child, quant)
    return model
