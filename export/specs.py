"""Each exported graph declared as data: inputs and outputs with symbolic dims, how to build the
wrapper, where its weights come from, and sizes to trace with. One model-agnostic mechanism per
target (ONNX, later Core ML and TensorRT) reads these.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from qiedge.reference_model.presets import TransformerConfig, VAEConfig
from torch import nn

from . import wrappers

# Dtype "float" follows the graph's precision; the others are fixed.
FLOAT = "float"

# Symbolic dims: (min, max) for the exporter, and a distinct trace-time size for each, so no two
# dims are ever mistaken for one another while tracing.
DIMS = {
    "batch": (1, 64, 2),
    "tokens": (2, 8192, 19),  # encoder tokens (template + prompt + image slots)
    "text": (1, 8192, 11),  # encoder tokens after the system prompt is dropped
    "cond": (0, 16384, 8),  # condition-image latent tokens (0 for text-to-image)
    "prefix": (1, 24576, 13),  # text + condition tokens of the joint sequence
    "target": (4, 16384, 24),  # target image tokens, (H/16) * (W/16)
    "latent_height": (2, 128, 4),
    "latent_width": (2, 128, 6),
}
PIXELS_PER_LATENT = 16


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # FLOAT, "float32", "int64" or "bool"
    shape: tuple[str | int, ...]  # dim names from DIMS (or "16*name"), or fixed sizes


@dataclass(frozen=True)
class ComponentSpec:
    name: str  # the manifest's key
    folder: str  # artifacts subfolder; graphs in one folder share its weights file
    file: str
    weights: str  # the model directory's component folder the weights come from
    key_prefix: str  # wrapper parameter name = key_prefix + checkpoint key
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    wrapper: Callable[[nn.Module], nn.Module]  # graph module around the reference component
    reference: Callable[[ModelConfigs], nn.Module]  # a fresh reference component (no weights loaded)
    # Tensors the reference computes from its config (buffers, not checkpoint weights).
    constants: Callable[[ModelConfigs], dict[str, np.ndarray]] = lambda configs: {}

    def build(self, configs: ModelConfigs) -> nn.Module:
        return self.wrapper(self.reference(configs))


@dataclass(frozen=True)
class ModelConfigs:
    transformer: TransformerConfig
    vae: VAEConfig
    encoder: dict  # transformers' Qwen3VLConfig as a dict


def _transformer(configs: ModelConfigs):
    from qiedge.reference_model.transformer import QwenImage2Transformer

    return QwenImage2Transformer(configs.transformer)


def _vae(configs: ModelConfigs):
    from qiedge.reference_model.vae import QwenImage2VAE

    return QwenImage2VAE(configs.vae)


def _vl_model(configs: ModelConfigs):
    from transformers import Qwen3VLConfig, Qwen3VLModel

    config = Qwen3VLConfig.from_dict(configs.encoder)
    config._attn_implementation = "sdpa"
    return Qwen3VLModel(config)


def _vae_constants(configs: ModelConfigs) -> dict[str, np.ndarray]:
    vae = configs.vae
    return {
        name: np.asarray(values, dtype=np.float32).reshape(1, -1, 1, 1)
        for name, values in (("latents_mean", vae.latents_mean), ("latents_std", vae.latents_std))
    }


def _rotary_constants(configs: ModelConfigs) -> dict[str, np.ndarray]:
    """The text model's RoPE inverse frequencies, from transformers' own rotary module on the CPU."""
    from transformers import Qwen3VLConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRotaryEmbedding

    text_config = Qwen3VLConfig.from_dict(configs.encoder).text_config
    with torch.device("cpu"):
        rotary = Qwen3VLTextRotaryEmbedding(text_config)
    return {f"model.language_model.rotary_emb.{name}": b.numpy() for name, b in rotary.named_buffers()}


KV = ("layers", "batch", "heads", "prefix", "head_dim")
PREFIX_INPUTS = (
    TensorSpec("text", FLOAT, ("batch", "text", "context")),
    TensorSpec("cond_latents", FLOAT, ("batch", "cond", "channels")),
    TensorSpec("prefix_gather", "int64", ("prefix",)),
    TensorSpec("segment_ids", "int64", ("prefix",)),
    TensorSpec("key_valid", "bool", ("batch", "prefix")),
)
STEP_INPUTS = (
    TensorSpec("latents", FLOAT, ("batch", "target", "channels")),
    TensorSpec("timestep", "float32", ("batch",)),
)
VELOCITY = (TensorSpec("velocity", FLOAT, ("batch", "target", "channels")),)


def _rope(prefix: str, length: str) -> tuple[TensorSpec, ...]:
    """Host-computed RoPE tables for `length` positions, fp32 at every precision."""
    return (
        TensorSpec(f"{prefix}rope_cos", "float32", (length, "half_head")),
        TensorSpec(f"{prefix}rope_sin", "float32", (length, "half_head")),
    )


SPECS = {
    spec.name: spec
    for spec in (
        ComponentSpec(
            name="condition_encoder",
            folder="condition_encoder",
            file="model.onnx",
            weights="text_encoder",
            key_prefix="",
            inputs=(
                TensorSpec("input_ids", "int64", ("batch", "tokens")),
                TensorSpec("attention_mask", "int64", ("batch", "tokens")),
                TensorSpec("position_ids", "int64", (3, "batch", "tokens")),
            ),
            outputs=(TensorSpec("hidden_states", FLOAT, ("batch", "tokens", "context")),),
            wrapper=wrappers.ConditionEncoderGraph,
            reference=_vl_model,
            constants=_rotary_constants,
        ),
        ComponentSpec(
            name="transformer_prefix",
            folder="transformer",
            file="prefix.onnx",
            weights="transformer",
            key_prefix="transformer.",
            inputs=PREFIX_INPUTS + _rope("", "prefix"),
            outputs=(TensorSpec("past_keys", FLOAT, KV), TensorSpec("past_values", FLOAT, KV)),
            wrapper=wrappers.TransformerPrefixGraph,
            reference=_transformer,
        ),
        ComponentSpec(
            name="transformer_step",
            folder="transformer",
            file="step.onnx",
            weights="transformer",
            key_prefix="transformer.",
            inputs=STEP_INPUTS
            + (
                TensorSpec("past_keys", FLOAT, KV),
                TensorSpec("past_values", FLOAT, KV),
                TensorSpec("key_valid", "bool", ("batch", "prefix")),
            )
            + _rope("", "target"),
            outputs=VELOCITY,
            wrapper=wrappers.TransformerStepGraph,
            reference=_transformer,
        ),
        ComponentSpec(
            name="transformer",
            folder="transformer",
            file="model.onnx",
            weights="transformer",
            key_prefix="transformer.",
            inputs=STEP_INPUTS + PREFIX_INPUTS + _rope("prefix_", "prefix") + _rope("target_", "target"),
            outputs=VELOCITY,
            wrapper=wrappers.TransformerGraph,
            reference=_transformer,
        ),
        ComponentSpec(
            name="vae_encoder",
            folder="vae_encoder",
            file="model.onnx",
            weights="vae",
            key_prefix="vae.",
            inputs=(TensorSpec("image", FLOAT, ("batch", "image_channels", "16*latent_height", "16*latent_width")),),
            outputs=(TensorSpec("latents", FLOAT, ("batch", "channels", "latent_height", "latent_width")),),
            wrapper=wrappers.VaeEncoderGraph,
            reference=_vae,
            constants=_vae_constants,
        ),
        ComponentSpec(
            name="vae_decoder",
            folder="vae_decoder",
            file="model.onnx",
            weights="vae",
            key_prefix="vae.",
            inputs=(TensorSpec("latents", FLOAT, ("batch", "channels", "latent_height", "latent_width")),),
            outputs=(TensorSpec("image", FLOAT, ("batch", "image_channels", "16*latent_height", "16*latent_width")),),
            wrapper=wrappers.VaeDecoderGraph,
            reference=_vae,
            constants=_vae_constants,
        ),
    )
}


def fixed_dims(configs: ModelConfigs) -> dict[str, int]:
    """The dims a given model fixes (not symbolic in its graphs)."""
    t = configs.transformer
    return {
        "channels": t.in_channels,
        "context": t.context_in_dim,
        "layers": t.num_layers,
        "heads": t.num_attention_heads,
        "head_dim": t.attention_head_dim,
        "half_head": t.attention_head_dim // 2,
        "image_channels": configs.vae.in_channels,
    }


def _resolve(dim, configs: ModelConfigs) -> int | str:
    """A dim as the graph declares it: an int when fixed, else its symbol (e.g. '16*latent_height')."""
    if isinstance(dim, int):
        return dim
    return fixed_dims(configs).get(dim, dim)


def declared_shape(tensor: TensorSpec, configs: ModelConfigs) -> list[int | str]:
    return [_resolve(d, configs) for d in tensor.shape]


def trace_size(dim: int | str, configs: ModelConfigs) -> int:
    dim = _resolve(dim, configs)
    if isinstance(dim, int):
        return dim
    factor, _, name = dim.rpartition("*")
    return int(factor or 1) * DIMS[name][2]


def torch_dtype(dtype: str, precision: torch.dtype) -> torch.dtype:
    return {FLOAT: precision, "float32": torch.float32, "int64": torch.int64, "bool": torch.bool}[dtype]


def trace_inputs(spec: ComponentSpec, configs: ModelConfigs, precision: torch.dtype, device: str = "cpu") -> dict:
    """Valid example inputs at the trace sizes (indices in range, masks mostly true)."""
    rng = np.random.default_rng(0)
    inputs = {}
    for t in spec.inputs:
        shape = [trace_size(d, configs) for d in t.shape]
        dtype = torch_dtype(t.dtype, precision)
        if t.name == "prefix_gather":
            high = DIMS["text"][2] + DIMS["cond"][2]
            value = torch.from_numpy(rng.integers(0, high, shape))
        elif t.name == "segment_ids":
            value = torch.from_numpy(np.repeat([-1, 0, -1], [3, shape[0] - 5, 2]))
        elif t.name in ("input_ids",):
            value = torch.from_numpy(rng.integers(0, 200, shape))
        elif t.name == "position_ids":
            value = torch.arange(shape[-1]).expand(*shape)
        elif dtype == torch.bool or t.name == "attention_mask":
            value = torch.ones(shape, dtype=dtype)
        else:
            value = torch.from_numpy(rng.standard_normal(shape, dtype=np.float32)).to(dtype)
        inputs[t.name] = value.to(dtype=dtype, device=device)
    return inputs


def dynamic_shapes(spec: ComponentSpec, configs: ModelConfigs) -> dict:
    dims = {}

    def dim(name):
        if name not in dims:
            low, high, _ = DIMS[name]
            dims[name] = torch.export.Dim(name, min=max(low, 0), max=high)
        return dims[name]

    result = {}
    for t in spec.inputs:
        axes = {}
        for axis, d in enumerate(declared_shape(t, configs)):
            if isinstance(d, str):
                factor, _, name = d.rpartition("*")
                axes[axis] = int(factor) * dim(name) if factor else dim(name)
        result[t.name] = axes
    return result
