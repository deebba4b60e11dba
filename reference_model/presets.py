"""Typed configs for every component, and the named presets.

Field names equal the keys of the public diffusers / transformers `config.json` files, so a
config round-trips through a model directory unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from qiedge.core import typed


@dataclass(frozen=True)
class TransformerConfig:
    """`QwenImage21Transformer2DModel`'s config."""

    patch_size: int = 1
    in_channels: int = 64
    out_channels: int = 64
    num_layers: int = 32
    attention_head_dim: int = 128
    num_attention_heads: int = 32
    context_in_dim: int = 4096
    mlp_ratio: int = 3
    axes_dims_rope: tuple[int, int, int] = (16, 56, 56)
    eps: float = 1e-6
    causal_condition: bool = True

    def __post_init__(self):
        object.__setattr__(self, "axes_dims_rope", tuple(self.axes_dims_rope))
        if self.patch_size != 1:
            raise ValueError(f"Qwen-Image-2 consumes latents unpatched (patch_size=1), got {self.patch_size}")
        if sum(self.axes_dims_rope) != self.attention_head_dim:
            raise ValueError(
                f"axes_dims_rope {self.axes_dims_rope} must sum to attention_head_dim {self.attention_head_dim}"
            )
        if any(d % 2 for d in self.axes_dims_rope):
            raise ValueError(f"every RoPE axis needs an even width, got {self.axes_dims_rope}")
        if not self.causal_condition:
            raise ValueError("only causal_condition=True is supported: the prefix K/V cache depends on it")

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim


@dataclass(frozen=True)
class VAEConfig:
    """`AutoencoderKLQwenImage21`'s config (images only: one frame, no temporal work)."""

    base_dim: int = 96
    decoder_base_dim: int = 144
    z_dim: int = 64
    dim_mult: tuple[int, ...] = (1, 2, 4, 8, 8)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temperal_downsample: tuple[bool, ...] = (False, True, True, True)
    dropout: float = 0.0
    latents_mean: tuple[float, ...] = ()
    latents_std: tuple[float, ...] = ()
    is_residual: bool = True
    in_channels: int = 4
    out_channels: int = 4
    patch_size: int | None = None
    scale_factor_temporal: int = 8
    scale_factor_spatial: int = 16

    def __post_init__(self):
        for name in ("dim_mult", "attn_scales", "temperal_downsample", "latents_mean", "latents_std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.latents_mean:
            object.__setattr__(self, "latents_mean", (0.0,) * self.z_dim)
        if not self.latents_std:
            object.__setattr__(self, "latents_std", (1.0,) * self.z_dim)
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise ValueError(f"latents_mean/std need {self.z_dim} values each")
        if not self.is_residual or self.patch_size is not None or self.attn_scales:
            raise ValueError("only the Qwen-Image-2 design is supported: is_residual, no patchify, no attn_scales")
        if 2 ** (len(self.dim_mult) - 1) != self.scale_factor_spatial:
            raise ValueError(f"{len(self.dim_mult) - 1} downsampling stages do not give {self.scale_factor_spatial}x")


@dataclass(frozen=True)
class EncoderConfig:
    """The Qwen3-VL condition encoder: transformers' `Qwen3VLConfig` fields, kept as plain dicts."""

    text_config: dict[str, Any] = field(default_factory=dict)
    vision_config: dict[str, Any] = field(default_factory=dict)
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653


@dataclass(frozen=True)
class Preset:
    """A named model to build: configs only, no files (`qiedge init` writes it as a ModelDir,
    `export --preset` streams stand-in weights for it)."""

    name: str
    transformer: TransformerConfig
    vae: VAEConfig
    encoder: EncoderConfig
    # Distilled sampling grid (before the scheduler's shift); None means the 40-step schedule.
    sample_sigmas: tuple[float, ...] | None


def config_dict(config) -> dict[str, Any]:
    """A config as the JSON object diffusers writes (tuples become lists)."""
    return json_ready(dataclasses.asdict(config))


def json_ready(value):
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def from_dict(cls, data: dict[str, Any], source: str = "config"):
    """Build a config from a `config.json`, ignoring bookkeeping keys such as `_class_name`; every
    value is checked against its field's type, and a bad one refused naming `source` and the key."""
    return typed.from_dict(cls, data, source)


# The released Qwen-Image-2.1 VAE statistics (diffusers' class defaults).
QWEN_IMAGE_2_LATENTS_MEAN = (
    0.5126,
    0.7721,
    -0.0631,
    1.3506,
    -0.7855,
    -2.1025,
    -0.3458,
    1.3722,
    1.8873,
    -1.7177,
    -0.6510,
    0.2732,
    0.7562,
    -0.6163,
    -1.0277,
    3.8363,
    2.0210,
    0.0472,
    0.9320,
    2.0087,
    2.4954,
    -0.1391,
    -1.4249,
    1.8464,
    -0.5236,
    1.2826,
    3.7046,
    -1.3035,
    2.7286,
    -1.4518,
    -1.9036,
    -1.9955,
    -0.0342,
    -1.0265,
    -0.7636,
    3.0555,
    0.0746,
    -3.0751,
    -0.1076,
    1.7376,
    -1.0914,
    -1.9435,
    -0.2784,
    -1.3680,
    0.4809,
    -0.4433,
    0.3764,
    0.5729,
    -2.0595,
    1.0960,
    -1.3260,
    -2.0211,
    -5.0179,
    0.5275,
    4.0162,
    1.8505,
    0.3026,
    1.9373,
    1.4937,
    0.2632,
    0.5547,
    -1.7121,
    -0.1562,
    0.0304,
)
QWEN_IMAGE_2_LATENTS_STD = (
    3.2001,
    3.2936,
    3.4321,
    3.0091,
    3.1061,
    4.0379,
    4.0705,
    3.7910,
    3.0785,
    3.6500,
    3.9308,
    3.0904,
    2.8778,
    3.7675,
    3.7320,
    5.0756,
    3.2864,
    4.0397,
    3.1317,
    4.0443,
    2.9249,
    3.9454,
    3.0988,
    4.2489,
    3.4896,
    3.8513,
    3.9323,
    3.4719,
    3.7498,
    4.2830,
    3.5694,
    4.2467,
    3.9037,
    3.2947,
    5.0770,
    3.5075,
    3.2700,
    3.4767,
    2.8063,
    5.1125,
    3.5327,
    4.7833,
    3.1286,
    4.1819,
    3.8527,
    3.8312,
    3.5605,
    4.3875,
    3.9624,
    4.0168,
    3.5643,
    4.0550,
    5.5614,
    4.2963,
    4.4080,
    3.4959,
    3.8747,
    3.7608,
    3.5735,
    3.1490,
    3.7662,
    3.6746,
    3.4563,
    3.8161,
)

# Token ids of the byte-level tokenizer that `qiedge init` writes: 256 byte tokens, then these.
TINY_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
TINY_VOCAB_SIZE = 256 + len(TINY_SPECIAL_TOKENS)


def _tiny_token_id(token: str) -> int:
    return 256 + TINY_SPECIAL_TOKENS.index(token)


def _small_encoder(
    hidden: int, layers: int, heads: int, kv_heads: int, head_dim: int, vision_hidden: int
) -> EncoderConfig:
    half = head_dim // 2
    mrope = [half - 2 * (half * 5 // 16), half * 5 // 16, half * 5 // 16]
    return EncoderConfig(
        text_config={
            "vocab_size": TINY_VOCAB_SIZE,
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "head_dim": head_dim,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5000000.0,
                "mrope_section": mrope,
                "mrope_interleaved": True,
            },
        },
        vision_config={
            "depth": 2,
            "hidden_size": vision_hidden,
            "intermediate_size": 2 * vision_hidden,
            "num_heads": 2,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": hidden,
            "num_position_embeddings": 256,
            "deepstack_visual_indexes": [0],
        },
        image_token_id=_tiny_token_id("<|image_pad|>"),
        video_token_id=_tiny_token_id("<|video_pad|>"),
        vision_start_token_id=_tiny_token_id("<|vision_start|>"),
        vision_end_token_id=_tiny_token_id("<|vision_end|>"),
    )


TINY = Preset(
    name="tiny",
    transformer=TransformerConfig(
        num_layers=2, attention_head_dim=32, num_attention_heads=2, context_in_dim=64, axes_dims_rope=(8, 12, 12)
    ),
    vae=VAEConfig(base_dim=8, decoder_base_dim=12),
    encoder=_small_encoder(hidden=64, layers=2, heads=2, kv_heads=1, head_dim=32, vision_hidden=32),
    sample_sigmas=(1.0, 0.75, 0.5, 0.25),
)

# The trained demo checkpoint's size (training/train_demo.py): big enough to draw the scenes of
# `scenes.py` from prompts, small enough to train in under an hour on two CPU cores.
DEMO = Preset(
    name="demo",
    transformer=TransformerConfig(
        num_layers=4, attention_head_dim=32, num_attention_heads=4, context_in_dim=64, axes_dims_rope=(8, 12, 12)
    ),
    vae=VAEConfig(base_dim=12, decoder_base_dim=16),
    encoder=TINY.encoder,
    sample_sigmas=(1.0, 0.75, 0.5, 0.25),
)

SMALL = Preset(
    name="small",
    transformer=TransformerConfig(num_layers=8, attention_head_dim=128, num_attention_heads=8, context_in_dim=256),
    vae=VAEConfig(base_dim=16, decoder_base_dim=24),
    encoder=_small_encoder(hidden=256, layers=4, heads=4, kv_heads=2, head_dim=64, vision_hidden=64),
    sample_sigmas=(1.0, 0.75, 0.5, 0.25),
)

QWEN_IMAGE_2_7B = Preset(
    name="qwen-image-2-7b",
    transformer=TransformerConfig(),
    vae=VAEConfig(latents_mean=QWEN_IMAGE_2_LATENTS_MEAN, latents_std=QWEN_IMAGE_2_LATENTS_STD),
    encoder=EncoderConfig(
        text_config={
            "vocab_size": 151936,
            "hidden_size": 4096,
            "intermediate_size": 12288,
            "num_hidden_layers": 36,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "max_position_embeddings": 262144,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5000000.0,
                "mrope_section": [24, 20, 20],
                "mrope_interleaved": True,
            },
        },
        vision_config={
            "depth": 27,
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_heads": 16,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": 4096,
            "num_position_embeddings": 2304,
            "deepstack_visual_indexes": [8, 16, 24],
        },
    ),
    sample_sigmas=None,
)

PRESETS = {p.name: p for p in (TINY, DEMO, SMALL, QWEN_IMAGE_2_7B)}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
