"""The sampling loop over sessions, in NumPy: one loop for every backend.

encode prompt once -> prefix K/V once -> for each sigma: velocity -> Euler step -> decode.
Same seed, same initial noise as diffusers (torch's CPU `randn` on the unpacked shape, drawn in
NumPy by `noise.torch_randn`), so the same weights, prompt and seed give diffusers' image.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from qiedge.reference_model.layout import build_layout, rope_tables
from qiedge.reference_model.prompt import EncodedPrompt, strip_prompt
from qiedge.reference_model.scheduler import model_timesteps, sigma_schedule

from .artifacts import ModelFacts
from .backends import Session
from .noise import torch_randn
from .tokenizer import PromptTokenizer

PIXELS_PER_TOKEN = 16  # VAE compression
SIZE_MULTIPLE = 32  # one encoder image slot covers 2x2 latent tokens
MAX_SIDE = 2048
DEFAULT_STEPS = 40


@dataclass
class Request:
    prompts: list[str]
    width: int = 1024
    height: int = 1024
    steps: int | None = None  # None: the model's distilled grid, else 40
    seed: int = 0
    cfg: float = 1.0
    negative_prompt: str | None = None
    images: list[Image.Image] = field(default_factory=list)  # condition images, shared by the batch
    resolution: int = 1024  # condition images are resized to about this squared area

    def validate(self) -> None:
        for name, value in (("width", self.width), ("height", self.height)):
            if value % SIZE_MULTIPLE or not SIZE_MULTIPLE <= value <= MAX_SIDE:
                raise ValueError(
                    f"{name} {value} must be a multiple of {SIZE_MULTIPLE} between "
                    f"{SIZE_MULTIPLE} and {MAX_SIDE} (one encoder image slot covers 32x32 px)"
                )
        if not self.prompts:
            raise ValueError("need at least one prompt")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.cfg > 1 and self.negative_prompt is None:
            raise ValueError('--cfg above 1 needs a negative prompt (use " " for an empty one)')

    @property
    def guided(self) -> bool:
        return self.cfg > 1 and self.negative_prompt is not None


def condition_size(image: Image.Image, resolution: int) -> tuple[int, int]:
    """(width, height) of about resolution^2 pixels at the image's aspect ratio, multiples of 32."""
    ratio = image.width / image.height
    width = math.sqrt(resolution * resolution * ratio)
    return round(width / 32) * 32, round(width / ratio / 32) * 32


def resize_condition(image: Image.Image, resolution: int) -> Image.Image:
    return image.convert("RGBA").resize(condition_size(image, resolution), resample=Image.Resampling.LANCZOS)


def image_to_array(image: Image.Image) -> np.ndarray:
    """RGBA PIL image -> [1, 4, H, W] float32 in [-1, 1]."""
    array = np.asarray(image.convert("RGBA"), dtype=np.float32) / np.float32(255)
    return array.transpose(2, 0, 1)[None] * 2 - 1


def pack(latents: np.ndarray) -> np.ndarray:
    """[B, C, h, w] -> [B, h*w, C]: Qwen-Image-2 reads latents unpatched, row by row."""
    b, c = latents.shape[:2]
    return latents.reshape(b, c, -1).transpose(0, 2, 1)


def unpack(tokens: np.ndarray, h: int, w: int) -> np.ndarray:
    return tokens.transpose(0, 2, 1).reshape(tokens.shape[0], -1, h, w)


def schedule_for(facts: ModelFacts, num_tokens: int, steps: int | None) -> np.ndarray:
    """The model's distilled grid when it fits the asked steps, else evenly spaced steps."""
    grid = facts.sample_sigmas
    if grid is not None and (steps is None or steps == len(grid)):
        return sigma_schedule(facts.scheduler, num_tokens, sample_sigmas=grid)
    return sigma_schedule(facts.scheduler, num_tokens, steps=steps or DEFAULT_STEPS)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8, rounded as diffusers rounds."""
    return (images * 255).round().astype(np.uint8)


class GraphPromptEncoder:
    """Tokenizer + an exported (or torch) condition-encoder session: text prompts only."""

    def __init__(self, tokenizer: PromptTokenizer, session: Session):
        self.tokenizer, self.session = tokenizer, session

    def __call__(self, prompts: list[str], images: list[Image.Image]) -> EncodedPrompt:
        if images:
            raise ValueError(
                "editing needs Qwen3-VL's vision tower, which is not exported: "
                "run the condition encoder on the torch backend (--encoder-backend torch)"
            )
        tokens = self.tokenizer(prompts)
        hidden = self.session.run(
            {
                "input_ids": tokens.input_ids,
                "attention_mask": tokens.attention_mask,
                "position_ids": tokens.position_ids,
            }
        )["hidden_states"]
        return strip_prompt(
            hidden, tokens.input_ids, tokens.attention_mask, self.tokenizer.drop, self.tokenizer.image_pad_id
        )


@dataclass
class Sessions:
    encode: Callable[[list[str], list[Image.Image]], EncodedPrompt]
    prefix: Session
    step: Session
    vae_decoder: Session
    vae_encoder: Callable[[], Session]  # loaded only when editing


def generate(
    request: Request, facts: ModelFacts, sessions: Sessions, on_step: Callable[[int, int], None] | None = None
) -> np.ndarray:
    """Images [B, H, W, 4] float32 in [0, 1]."""
    request.validate()
    batch = len(request.prompts)
    h, w = request.height // PIXELS_PER_TOKEN, request.width // PIXELS_PER_TOKEN
    conditions = [resize_condition(img, request.resolution) for img in request.images]
    cond_latents = _encode_images(sessions, conditions, batch, facts.latent_channels)
    shapes = [(1, c.height // PIXELS_PER_TOKEN, c.width // PIXELS_PER_TOKEN) for c in conditions] + [(1, h, w)]

    branches = [_prefix(sessions, facts, sessions.encode(request.prompts, conditions), cond_latents, shapes)]
    if request.guided:
        negative = sessions.encode([request.negative_prompt] * batch, conditions)
        branches.append(_prefix(sessions, facts, negative, cond_latents, shapes))

    latents = pack(torch_randn((batch, 1, facts.latent_channels, h, w), request.seed)[:, 0])  # [B, h*w, C]
    sigmas = schedule_for(facts, h * w, request.steps)
    for i, t in enumerate(model_timesteps(sigmas)):
        timestep = np.full(batch, t, dtype=np.float32)
        velocity = [
            sessions.step.run({"latents": latents, "timestep": timestep, **branch})["velocity"] for branch in branches
        ]
        v = velocity[0] if len(velocity) == 1 else velocity[1] + np.float32(request.cfg) * (velocity[0] - velocity[1])
        latents = (latents + (sigmas[i + 1] - sigmas[i]) * v).astype(np.float32)
        if on_step:
            on_step(i + 1, len(sigmas) - 1)
    image = sessions.vae_decoder.run({"latents": unpack(latents, h, w)})["image"]
    return np.clip(image / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)


def _encode_images(sessions: Sessions, images: list[Image.Image], batch: int, channels: int) -> np.ndarray:
    """Condition images' normalised latents, packed and concatenated: [B, S_cond, C]."""
    if not images:
        return np.zeros((batch, 0, channels), dtype=np.float32)
    encoder = sessions.vae_encoder()
    tokens = [pack(encoder.run({"image": image_to_array(img)})["latents"]) for img in images]
    return np.repeat(np.concatenate(tokens, axis=1), batch, axis=0)


def _prefix(sessions: Sessions, facts: ModelFacts, encoded: EncodedPrompt, cond_latents, shapes) -> dict:
    """Everything `step` needs besides latents and timestep: cached K/V, key padding, target RoPE."""
    layout = build_layout(encoded.image_slots, encoded.mask, shapes)
    cos, sin = rope_tables(layout.positions, facts.axes_dims_rope)
    p = layout.prefix_len
    cache = sessions.prefix.run(
        {
            "text": encoded.embeds,
            "cond_latents": cond_latents,
            "prefix_gather": layout.prefix_gather,
            "segment_ids": layout.segment_ids,
            "key_valid": layout.prefix_key_valid,
            "rope_cos": cos[:p],
            "rope_sin": sin[:p],
        }
    )
    return {
        "past_keys": cache["past_keys"],
        "past_values": cache["past_values"],
        "key_valid": layout.prefix_key_valid,
        "rope_cos": cos[p:],
        "rope_sin": sin[p:],
    }
