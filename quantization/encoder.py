"""Weight-only quantization of the condition encoder: every Linear of Qwen3-VL's decoder layers
(the attention and MLP projections: 6.95 of the 7B text path's 7.57 billion weights, the rest
being the token embedding table) stores its weight in INT8 per output channel or INT4 per group
of input channels and multiplies in float. The token embeddings, the norms and the vision tower
stay in float.

Layer names are the checkpoint's (`model.language_model.layers.0.self_attn.q_proj`), which are
also transformers' module names and the exported graph's initializer names, so one plan serves
the fake-quant encoder that measures the cost and the Q/DQ graph that ships it.
"""

from __future__ import annotations

import copy
from dataclasses import replace

from torch import nn

from .fake_quant import QuantLinear, replace_linears
from .recipe import ENCODER_LAYERS, EncoderWeights
from .scales import LayerQuant


def encoder_layers(vl_model: nn.Module) -> list[str]:
    """The quantized Linear layers of transformers' Qwen3VLForConditionalGeneration."""
    return [n for n, m in vl_model.named_modules() if isinstance(m, nn.Linear) and n.startswith(ENCODER_LAYERS)]


def encoder_quants(vl_model: nn.Module, weights: EncoderWeights) -> dict[str, LayerQuant]:
    """Each layer's weight scales, from its own weight (nothing is calibrated)."""
    quants = {}
    for name in encoder_layers(vl_model):
        quant = LayerQuant(smooth=None, act_scale=None, granularity=weights.granularity)
        weight = vl_model.get_submodule(name).weight.detach().float()
        quants[name] = replace(quant, weight_scale=quant.scale_of(weight, weights.format))
    return quants


def quantized_encoder(encoder, quants: dict[str, LayerQuant], fmt: str):
    """A copy of the prompt encoder (reference_model.condition_encoder.ConditionEncoder) whose
    language model computes with the dequantized weights, as the Q/DQ graph does. The copy shares
    the original's parameters, its replaced Linears holding their dequantized weights instead: at
    7B a whole deep copy would hold a second 30 GB of fp32 weights."""
    shared = {id(p): p for p in encoder.model.parameters()}
    model = replace_linears(copy.deepcopy(encoder.model, shared), quants, lambda linear, q: QuantLinear(linear, q, fmt))
    clone = copy.copy(encoder)
    clone.model = model
    return clone
