"""The graph contract as data: every exported graph's inputs and outputs, by name, dtype and
symbolic dims. Export traces against it, the manifest records it, and any runtime can read it
without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from .units import PIXELS_PER_TOKEN

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
    "vision": (1, 16384, 7),  # one condition image's vision tokens (2x2 patches each)
    # Rows of the encoder's image table: a zero row for text tokens, then every image's tokens.
    "image_rows": (1, 65537, 9),
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # FLOAT, "float32", "int64" or "bool"
    shape: tuple[str | int, ...]  # dim names from DIMS (or "16*name"), or names a model fixes
    # How a valid example is drawn for tracing: normal, ones, zeros, token_ids, positions, gather or segments.
    example: str = "normal"


@dataclass(frozen=True)
class Contract:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


KV = ("layers", "batch", "heads", "prefix", "head_dim")
# A chunked graph's chunk takes what an earlier chunk returned under the same name with this
# suffix: Core ML names no tensor both an input and an output of one function.
HANDED = "_in"
PAST = (TensorSpec("past_keys", FLOAT, KV), TensorSpec("past_values", FLOAT, KV))
PREFIX_INPUTS = (
    TensorSpec("text", FLOAT, ("batch", "text", "context")),
    TensorSpec("cond_latents", FLOAT, ("batch", "cond", "channels")),
    TensorSpec("prefix_gather", "int64", ("prefix",), example="gather"),
    TensorSpec("segment_ids", "int64", ("prefix",), example="segments"),
    TensorSpec("key_valid", "bool", ("batch", "prefix")),
)
STEP_INPUTS = (
    TensorSpec("latents", FLOAT, ("batch", "target", "channels")),
    TensorSpec("timestep", "float32", ("batch",)),
)
VELOCITY = (TensorSpec("velocity", FLOAT, ("batch", "target", "channels")),)
LATENTS = TensorSpec("latents", FLOAT, ("batch", "channels", "latent_height", "latent_width"))
IMAGE = TensorSpec(
    "image", FLOAT, ("batch", "image_channels", f"{PIXELS_PER_TOKEN}*latent_height", f"{PIXELS_PER_TOKEN}*latent_width")
)


def _rope(prefix: str, length: str) -> tuple[TensorSpec, ...]:
    """Host-computed RoPE tables for `length` positions, fp32 at every precision."""
    return (
        TensorSpec(f"{prefix}rope_cos", "float32", (length, "half_head")),
        TensorSpec(f"{prefix}rope_sin", "float32", (length, "half_head")),
    )


CONTRACTS = {
    "condition_encoder": Contract(
        inputs=(
            TensorSpec("input_ids", "int64", ("batch", "tokens"), example="token_ids"),
            TensorSpec("attention_mask", "int64", ("batch", "tokens"), example="ones"),
            TensorSpec("position_ids", "int64", (3, "batch", "tokens"), example="positions"),
            # The vision tower's outputs for every condition image, after a zero row; image_index
            # is each token's row (0 for text), so text-only prompts pass the zero row alone.
            TensorSpec("image_embeds", FLOAT, ("image_rows", "context")),
            TensorSpec("deepstack_embeds", FLOAT, ("deepstack", "image_rows", "context")),
            TensorSpec("image_index", "int64", ("batch", "tokens"), example="zeros"),
        ),
        outputs=(TensorSpec("hidden_states", FLOAT, ("batch", "tokens", "context")),),
    ),
    "vision_encoder": Contract(
        inputs=(
            TensorSpec("pixel_values", FLOAT, ("4*vision", "patch_dim")),
            TensorSpec("position_indices", "int64", ("4*vision", 4), example="token_ids"),
            TensorSpec("position_weights", "float32", ("4*vision", 4)),
            TensorSpec("rope_cos", "float32", ("4*vision", "vision_head_dim")),
            TensorSpec("rope_sin", "float32", ("4*vision", "vision_head_dim")),
        ),
        outputs=(
            TensorSpec("image_embeds", FLOAT, ("vision", "context")),
            TensorSpec("deepstack_embeds", FLOAT, ("deepstack", "vision", "context")),
        ),
    ),
    "transformer_prefix": Contract(inputs=PREFIX_INPUTS + _rope("", "prefix"), outputs=PAST),
    "transformer_step": Contract(
        inputs=STEP_INPUTS + PAST + (TensorSpec("key_valid", "bool", ("batch", "prefix")),) + _rope("", "target"),
        outputs=VELOCITY,
    ),
    "transformer": Contract(
        inputs=STEP_INPUTS + PREFIX_INPUTS + _rope("prefix_", "prefix") + _rope("target_", "target"),
        outputs=VELOCITY,
    ),
    "vae_encoder": Contract(inputs=(IMAGE,), outputs=(LATENTS,)),
    "vae_decoder": Contract(inputs=(LATENTS,), outputs=(IMAGE,)),
}
