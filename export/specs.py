"""Each exported graph declared as data: its contract (core/contract.py: inputs and outputs with
symbolic dims), how to build the wrapper, where its weights come from, and its parity cases.
One model-agnostic mechanism per target (ONNX, later Core ML and TensorRT) reads these.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from qiedge.core.contract import CONTRACTS, DIMS, FLOAT, Contract, TensorSpec
from qiedge.reference_model.presets import TransformerConfig, VAEConfig
from torch import nn

from . import cases, wrappers


@dataclass(frozen=True)
class ComponentSpec:
    name: str  # the manifest's key
    folder: str  # artifacts subfolder; graphs in one folder share its weights file
    stem: str  # the file name without the target's suffix (model.onnx, model.mlpackage, ...)
    weights: str  # the model directory's component folder the weights come from
    key_prefix: str  # wrapper parameter name = key_prefix + checkpoint key
    wrapper: Callable[[nn.Module], nn.Module]  # graph module around the reference component
    reference: Callable[[ModelConfigs], nn.Module]  # a fresh reference component (no weights loaded)
    cases: Callable[[cases.CaseContext], Iterator[cases.Case]]  # fresh parity inputs at several sizes
    # The component whose outputs this one consumes (the step graph's K/V come from the prefix graph).
    cache_from: str | None = None
    # Tensors the reference computes from its config (buffers, not checkpoint weights).
    constants: Callable[[ModelConfigs], dict[str, np.ndarray]] = lambda configs: {}
    contract: Contract | None = None  # a graph of its own (a chunk of a component); else the name's contract

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return (self.contract or CONTRACTS[self.name]).inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return (self.contract or CONTRACTS[self.name]).outputs

    def build(self, configs: ModelConfigs) -> nn.Module:
        return self.wrapper(self.reference(configs))


@dataclass(frozen=True)
class ModelConfigs:
    """What the graph wrappers are built from, whether the model is a ModelDir (real weights) or a
    Preset (stand-in weights): the encoder as transformers' config dict, which a Preset does not hold."""

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


SPECS = {
    spec.name: spec
    for spec in (
        ComponentSpec(
            name="condition_encoder",
            folder="condition_encoder",
            stem="model",
            weights="text_encoder",
            key_prefix="",
            wrapper=wrappers.ConditionEncoderGraph,
            reference=_vl_model,
            cases=cases.encoder,
            constants=_rotary_constants,
        ),
        ComponentSpec(
            name="vision_encoder",
            folder="vision_encoder",
            stem="model",
            weights="text_encoder",
            key_prefix="",
            wrapper=wrappers.VisionEncoderGraph,
            reference=_vl_model,
            cases=cases.vision_encoder,
        ),
        ComponentSpec(
            name="transformer_prefix",
            folder="transformer",
            stem="prefix",
            weights="transformer",
            key_prefix="transformer.",
            wrapper=wrappers.TransformerPrefixGraph,
            reference=_transformer,
            cases=cases.transformer_prefix,
        ),
        ComponentSpec(
            name="transformer_step",
            folder="transformer",
            stem="step",
            weights="transformer",
            key_prefix="transformer.",
            wrapper=wrappers.TransformerStepGraph,
            reference=_transformer,
            cases=cases.transformer_step,
            cache_from="transformer_prefix",
        ),
        ComponentSpec(
            name="transformer",
            folder="transformer",
            stem="model",
            weights="transformer",
            key_prefix="transformer.",
            wrapper=wrappers.TransformerGraph,
            reference=_transformer,
            cases=cases.transformer,
        ),
        ComponentSpec(
            name="vae_encoder",
            folder="vae_encoder",
            stem="model",
            weights="vae",
            key_prefix="vae.",
            wrapper=wrappers.VaeEncoderGraph,
            reference=_vae,
            cases=cases.vae_encoder,
            constants=_vae_constants,
        ),
        ComponentSpec(
            name="vae_decoder",
            folder="vae_decoder",
            stem="model",
            weights="vae",
            key_prefix="vae.",
            wrapper=wrappers.VaeDecoderGraph,
            reference=_vae,
            cases=cases.vae_decoder,
            constants=_vae_constants,
        ),
    )
}


def fixed_dims(configs: ModelConfigs) -> dict[str, int]:
    """The dims a given model fixes (not symbolic in its graphs)."""
    t, vision = configs.transformer, configs.encoder["vision_config"]
    return {
        "channels": t.in_channels,
        "context": t.context_in_dim,
        "layers": t.num_layers,
        "heads": t.num_attention_heads,
        "head_dim": t.attention_head_dim,
        "half_head": t.attention_head_dim // 2,
        "inner": t.inner_dim,
        "modulation": 4 * t.inner_dim,
        "image_channels": configs.vae.in_channels,
        "patch_dim": vision["in_channels"] * vision["temporal_patch_size"] * vision["patch_size"] ** 2,
        "vision_head_dim": vision["hidden_size"] // vision["num_heads"],
        "deepstack": len(vision["deepstack_visual_indexes"]),
    }


def _resolve(dim, configs: ModelConfigs) -> int | str:
    """A dim as the graph declares it: an int when fixed, else its symbol (e.g. '16*latent_height')."""
    if isinstance(dim, int):
        return dim
    return fixed_dims(configs).get(dim, dim)


def declared_shape(tensor: TensorSpec, configs: ModelConfigs) -> list[int | str]:
    return [_resolve(d, configs) for d in tensor.shape]


def describe(tensors: tuple[TensorSpec, ...], configs: ModelConfigs, precision: str) -> list[dict]:
    """Tensors as the manifest records them: name, dtype ('float' as the precision), declared shape."""
    return [
        {"name": t.name, "dtype": precision if t.dtype == FLOAT else t.dtype, "shape": declared_shape(t, configs)}
        for t in tensors
    ]


TRACE_SIZES = {name: size for name, (_, _, size) in DIMS.items()}


def trace_size(dim: int | str, configs: ModelConfigs, sizes: dict[str, int] = TRACE_SIZES) -> int:
    dim = _resolve(dim, configs)
    if isinstance(dim, int):
        return dim
    factor, _, name = dim.rpartition("*")
    return int(factor or 1) * sizes[name]


def torch_dtype(dtype: str, precision: torch.dtype) -> torch.dtype:
    return {FLOAT: precision, "float32": torch.float32, "int64": torch.int64, "bool": torch.bool}[dtype]


def trace_inputs(
    spec: ComponentSpec,
    configs: ModelConfigs,
    precision: torch.dtype,
    device: str = "cpu",
    sizes: dict[str, int] = TRACE_SIZES,
) -> dict:
    """Valid example inputs (indices in range, masks mostly true) at the given dim sizes: the
    distinct trace sizes by default, or one fixed-shape bucket's."""
    rng = np.random.default_rng(0)
    inputs = {}
    for t in spec.inputs:
        shape = [trace_size(d, configs, sizes) for d in t.shape]
        dtype = torch_dtype(t.dtype, precision)
        if t.example == "gather":  # rows of cat(text, condition latents)
            high = sizes["text"] + sizes["cond"]
            value = torch.from_numpy(rng.integers(0, high, shape))
        elif t.example == "segments":  # text, one image block, text
            value = torch.from_numpy(np.repeat([-1, 0, -1], [3, shape[0] - 5, 2]))
        elif t.example == "token_ids":
            value = torch.from_numpy(rng.integers(0, 200, shape))
        elif t.example == "positions":
            value = torch.arange(shape[-1]).expand(*shape)
        elif t.example == "ones" or dtype == torch.bool:
            value = torch.ones(shape, dtype=dtype)
        elif t.example == "zeros":
            value = torch.zeros(shape, dtype=dtype)
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
