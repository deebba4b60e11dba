"""The reference text-to-image / editing loop in PyTorch, equal to diffusers' `QwenImage21Pipeline`.

encode prompt once -> prefix K/V once -> for each sigma: velocity -> Euler step -> decode.
Same seed, same noise as diffusers (CPU `torch.Generator`, `randn` on the unpacked shape), so
the same weights, prompt and seed give the same image.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from .layout import build_layout, rope_tables
from .model_dir import ModelDir
from .scheduler import model_timesteps, sigma_schedule

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
                raise ValueError(f"{name} {value} must be a multiple of {SIZE_MULTIPLE} between "
                                 f"{SIZE_MULTIPLE} and {MAX_SIDE} (one encoder image slot covers 32x32 px)")
        if not self.prompts:
            raise ValueError("need at least one prompt")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")

    @property
    def guided(self) -> bool:
        return self.cfg > 1 and self.negative_prompt is not None


def condition_size(image: Image.Image, resolution: int) -> tuple[int, int]:
    """(width, height) of about resolution^2 pixels at the image's aspect ratio, multiples of 32."""
    ratio = image.width / image.height
    width = math.sqrt(resolution * resolution * ratio)
    height = width / ratio
    return round(width / 32) * 32, round(height / 32) * 32


def resize_condition(image: Image.Image, resolution: int) -> Image.Image:
    return image.convert("RGBA").resize(condition_size(image, resolution), resample=Image.Resampling.LANCZOS)


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGBA PIL image -> [1, 4, H, W] in [-1, 1]."""
    array = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None] * 2 - 1


def pack(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, h*w, C]: Qwen-Image-2 reads latents unpatched, row by row."""
    return latents.flatten(2).transpose(1, 2)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return tokens.transpose(1, 2).unflatten(2, (h, w))


def schedule_for(model: ModelDir, num_tokens: int, steps: int | None) -> np.ndarray:
    """The model's distilled grid when it fits the asked steps, else evenly spaced steps."""
    grid = model.sample_sigmas
    if grid is not None and (steps is None or steps == len(grid)):
        return sigma_schedule(model.scheduler, num_tokens, sample_sigmas=grid)
    return sigma_schedule(model.scheduler, num_tokens, steps=steps or DEFAULT_STEPS)


class TorchPipeline:
    def __init__(self, model: ModelDir, dtype: torch.dtype = torch.float32, device: str = "cpu"):
        self.model = model
        self.dtype, self.device = dtype, device
        self.encoder = model.load_condition_encoder(dtype, device)
        self.transformer = model.load_transformer(dtype, device)
        self.vae = model.load_vae(dtype, device)

    @torch.no_grad()
    def __call__(self, request: Request, on_step: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Images [B, H, W, 4] float32 in [0, 1]."""
        request.validate()
        batch = len(request.prompts)
        h, w = request.height // PIXELS_PER_TOKEN, request.width // PIXELS_PER_TOKEN
        conditions = [resize_condition(img, request.resolution) for img in request.images]
        cond_latents = self._encode_images(conditions, batch)
        shapes = [(1, c.height // PIXELS_PER_TOKEN, c.width // PIXELS_PER_TOKEN) for c in conditions] + [(1, h, w)]

        branches = [self._prefix(request.prompts, conditions, cond_latents, shapes)]
        if request.guided:
            branches.append(self._prefix([request.negative_prompt] * batch, conditions, cond_latents, shapes))

        generator = torch.Generator("cpu").manual_seed(request.seed)
        noise = torch.randn((batch, 1, self.model.vae.z_dim, h, w), generator=generator, dtype=self.dtype)
        latents = pack(noise[:, 0].to(self.device))  # [B, h*w, C]
        sigmas = schedule_for(self.model, h * w, request.steps)
        for i, t in enumerate(model_timesteps(sigmas)):
            timestep = torch.full((batch,), float(t), dtype=self.dtype, device=self.device)
            velocity = [self.transformer.step(latents, timestep, *branch) for branch in branches]
            v = velocity[0] if len(velocity) == 1 else velocity[1] + request.cfg * (velocity[0] - velocity[1])
            latents = (latents.float() + float(sigmas[i + 1] - sigmas[i]) * v.float()).to(self.dtype)
            if on_step:
                on_step(i + 1, len(sigmas) - 1)
        image = self.vae.decode(unpack(latents, h, w))
        return (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()

    def _encode_images(self, images: list[Image.Image], batch: int) -> torch.Tensor | None:
        """Condition images' normalised latents, packed and concatenated: [B, S_cond, C]."""
        if not images:
            return None
        tokens = [pack(self.vae.encode(image_to_tensor(img).to(self.device, self.dtype))) for img in images]
        return torch.cat(tokens, dim=1).expand(batch, -1, -1)

    def _prefix(self, prompts, conditions, cond_latents, shapes):
        """Everything `step` needs besides the latents: cached K/V, key padding, target RoPE."""
        encoded = self.encoder(prompts, conditions)
        layout = build_layout(encoded.image_slots, encoded.mask, shapes)
        cos, sin = (torch.from_numpy(t).to(self.device) for t in rope_tables(layout.positions, self.model.transformer.axes_dims_rope))
        p = layout.prefix_len
        key_valid = torch.from_numpy(layout.prefix_key_valid).to(self.device)
        keys, values = self.transformer.prefix(
            encoded.embeds.to(self.dtype), cond_latents,
            torch.from_numpy(layout.prefix_gather).to(self.device), torch.from_numpy(layout.segment_ids).to(self.device),
            key_valid, cos[:p], sin[:p],
        )
        return keys, values, key_valid, cos[p:], sin[p:]


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8, rounded as diffusers rounds."""
    return (images * 255).round().astype(np.uint8)
