"""What a model is made of: parameter counts, memory per precision, token counts per resolution.

Modules are built on the meta device, so the 7B preset is described without allocating it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from qiedge.core.units import PIXELS_PER_TOKEN
from torch import nn

from .model_dir import ModelDir
from .presets import EncoderConfig, Preset, TransformerConfig, VAEConfig
from .transformer import QwenImage2Transformer
from .vae import QwenImage2VAE

BYTES_PER_PARAM = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1, "fp8": 1}


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _text_encoder_counts(encoder: EncoderConfig | dict) -> dict[str, int]:
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    if isinstance(encoder, EncoderConfig):
        config = Qwen3VLConfig(text_config=dict(encoder.text_config), vision_config=dict(encoder.vision_config))
    else:
        config = Qwen3VLConfig.from_dict(encoder)
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(config)
    # The pipeline never runs lm_head: the condition is a hidden state, not logits.
    return {"language_model": count(model.model.language_model), "vision_tower": count(model.model.visual)}


def _stored_dtype(folder: Path) -> str:
    from .weights import open_weights, weight_files

    dtypes = set()
    for path in weight_files(folder):
        with open_weights(path) as f:
            dtypes |= {f.dtype(k) for k in f.keys()}
    return ",".join(sorted(dtypes))


def describe(
    transformer: TransformerConfig,
    vae: VAEConfig,
    encoder,
    width: int,
    height: int,
    stored: dict[str, str] | None = None,
) -> dict:
    with torch.device("meta"):
        t = QwenImage2Transformer(transformer)
        v = QwenImage2VAE(vae)
    text = _text_encoder_counts(encoder)
    params = {
        "transformer": count(t),
        "vae_encoder": count(v.encoder) + count(v.quant_conv),
        "vae_decoder": count(v.decoder) + count(v.post_quant_conv),
        "condition_encoder": text["language_model"],
        "vision_tower": text["vision_tower"],
    }
    components = {
        name: {
            "parameters": n,
            "memory_bytes": {p: n * b for p, b in BYTES_PER_PARAM.items()},
            **({"stored_dtype": stored[name]} if stored and name in stored else {}),
        }
        for name, n in params.items()
    }
    h, w = height // PIXELS_PER_TOKEN, width // PIXELS_PER_TOKEN
    return {
        "components": components,
        "total_parameters": sum(params.values()),
        "resolution": {
            "width": width,
            "height": height,
            "latent_grid": [vae.z_dim, h, w],
            "image_tokens": h * w,
            "encoder_slots_per_condition_image": h * w // 4,
        },
    }


def describe_preset(preset: Preset, width: int, height: int) -> dict:
    return {"preset": preset.name, **describe(preset.transformer, preset.vae, preset.encoder, width, height)}


def describe_model_dir(model: ModelDir, width: int, height: int) -> dict:
    encoder = json.loads((model.path / "text_encoder" / "config.json").read_text())
    stored = {
        "transformer": _stored_dtype(model.path / "transformer"),
        "vae_encoder": _stored_dtype(model.path / "vae"),
        "vae_decoder": _stored_dtype(model.path / "vae"),
        "condition_encoder": _stored_dtype(model.path / "text_encoder"),
    }
    return {"model": str(model.path), **describe(model.transformer, model.vae, encoder, width, height, stored)}
