"""The sampling loop over sessions: one loop for every backend.

encode prompt once -> prefix K/V once -> for each sigma: velocity -> Euler step -> decode.
Same seed, same initial noise as diffusers (torch's CPU `randn` on the unpacked shape, drawn in
NumPy by `noise.torch_randn`), so the same weights, prompt and seed give diffusers' image.

The loop's state lives in the backend's arrays (runtime/arrays.py): the noise and the layout's
tables go in once, the image comes out once, and everything between stays where the sessions
run. Its arithmetic uses Python-float scalars, which NumPy and torch both apply to float32
arrays in float32, so the host path is bit for bit what it was in pure NumPy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from qiedge.core.artifacts import ModelFacts
from qiedge.core.layout import build_layout, transformer_feeds
from qiedge.core.noise import SEEDS, torch_randn
from qiedge.core.prompt import EncodedPrompt, strip_prompt
from qiedge.core.scheduler import model_timesteps, sigma_schedule
from qiedge.core.tokenizer import PromptTokenizer
from qiedge.core.units import MAX_SIDE, PIXELS_PER_SLOT, PIXELS_PER_TOKEN
from qiedge.core.vision import (
    MAX_ASPECT,
    VisionFacts,
    VisionInput,
    image_index,
    image_tables,
    mrope_positions,
    rgb_for_vision,
    vision_input,
)

from .arrays import HOST, Arrays
from .backends import Session
from .images import MAX_INPUT_PIXELS

DEFAULT_STEPS = 40
# Bounds checked before any work: more steps than the 1,000 training timesteps revisit the same
# noise levels; a batch runs as one array, so its memory grows with it; a condition image is
# resized to about `resolution` squared, like a generated one at most MAX_SIDE on a side.
MAX_STEPS = 1000
MAX_BATCH = 64


class NonFiniteError(ValueError):
    """A component produced NaN or Inf: the image would be garbage, so nothing is written."""


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
            if value % PIXELS_PER_SLOT or not PIXELS_PER_SLOT <= value <= MAX_SIDE:
                raise ValueError(
                    f"{name} {value} must be a multiple of {PIXELS_PER_SLOT} between {PIXELS_PER_SLOT} and "
                    f"{MAX_SIDE} (one encoder image slot covers {PIXELS_PER_SLOT}x{PIXELS_PER_SLOT} px)"
                )
        if not self.prompts:
            raise ValueError("need at least one prompt")
        if len(self.prompts) > MAX_BATCH:
            raise ValueError(f"batch {len(self.prompts)} is over {MAX_BATCH} images per run")
        if self.steps is not None and not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"steps must be 1-{MAX_STEPS}, got {self.steps}")
        if not 0 <= self.seed < SEEDS:
            raise ValueError(
                f"seed {self.seed} is outside 0-{SEEDS - 1} (the noise is torch's CPU generator's, "
                "which reads 32 bits of the seed)"
            )
        if not math.isfinite(self.cfg) or self.cfg < 0:
            raise ValueError(f"cfg must be a finite number >= 0, got {self.cfg}")
        if self.images and not PIXELS_PER_SLOT <= self.resolution <= MAX_SIDE:
            raise ValueError(f"resolution {self.resolution} must be {PIXELS_PER_SLOT}-{MAX_SIDE}")
        for image in self.images:
            name = f"condition image {getattr(image, 'filename', '') or ''} is {image.width}x{image.height}"
            if image.width * image.height > MAX_INPUT_PIXELS:
                raise ValueError(f"{name}, over {MAX_INPUT_PIXELS // 10**6} megapixels: downscale it first")
            if max(image.width, image.height) > MAX_ASPECT * min(image.width, image.height):
                raise ValueError(f"{name}: the vision tower takes aspect ratios up to {MAX_ASPECT}:1")
            if min(condition_size(image, self.resolution)) < PIXELS_PER_SLOT:
                raise ValueError(
                    f"{name}: at --resolution {self.resolution} a side would be under {PIXELS_PER_SLOT} px"
                )
        if self.cfg > 1 and self.negative_prompt is None:
            raise ValueError('--cfg above 1 needs a negative prompt (use " " for an empty one)')

    @property
    def guided(self) -> bool:
        return self.cfg > 1 and self.negative_prompt is not None


def condition_size(image: Image.Image, resolution: int) -> tuple[int, int]:
    """(width, height) of about resolution^2 pixels at the image's aspect ratio, multiples of 32."""
    ratio = image.width / image.height
    width = math.sqrt(resolution * resolution * ratio)
    return (
        round(width / PIXELS_PER_SLOT) * PIXELS_PER_SLOT,
        round(width / ratio / PIXELS_PER_SLOT) * PIXELS_PER_SLOT,
    )


def resize_condition(image: Image.Image, resolution: int) -> Image.Image:
    return image.convert("RGBA").resize(condition_size(image, resolution), resample=Image.Resampling.LANCZOS)


def image_to_array(image: Image.Image) -> np.ndarray:
    """RGBA PIL image -> [1, 4, H, W] float32 in [-1, 1]."""
    array = np.asarray(image.convert("RGBA"), dtype=np.float32) / np.float32(255)
    return array.transpose(2, 0, 1)[None] * 2 - 1


def pack(latents):
    """[B, C, h, w] -> [B, h*w, C]: Qwen-Image-2 reads latents unpatched, row by row."""
    b, c = latents.shape[:2]
    return latents.reshape(b, c, -1).swapaxes(1, 2)


def unpack(tokens, h: int, w: int):
    return tokens.swapaxes(1, 2).reshape(tokens.shape[0], -1, h, w)


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
    """Tokenizer + exported condition-encoder session, and the vision tower's session (loaded on
    the first condition image) for editing: the prompt's image slots get the tower's features."""

    def __init__(
        self,
        tokenizer: PromptTokenizer,
        session: Session,
        vision: VisionFacts,
        load_vision: Callable[[], Session],
    ):
        self.tokenizer, self.session, self.vision = tokenizer, session, vision
        self.load_vision = load_vision
        self.vision_session: Session | None = None

    def __call__(self, prompts: list[str], images: list[Image.Image]) -> EncodedPrompt:
        inputs = [vision_input(rgb_for_vision(img), self.vision) for img in images]
        features = [self._see(i) for i in inputs]
        pad = self.tokenizer.image_pad_id
        tokens = self.tokenizer(prompts, [f[0].shape[0] for f in features])
        embeds, deepstack = image_tables(features, self.vision.hidden, self.vision.deepstack)
        grids = [i.grid for i in inputs]
        feeds = {
            "input_ids": tokens.input_ids,
            "attention_mask": tokens.attention_mask,
            "position_ids": mrope_positions(
                tokens.input_ids, tokens.attention_mask, pad, grids, self.vision.merge_size
            ),
            "image_embeds": embeds,
            "deepstack_embeds": deepstack,
            "image_index": image_index(tokens.input_ids, pad),
        }
        hidden = self.session.run(feeds)["hidden_states"]
        return strip_prompt(hidden, tokens.input_ids, tokens.attention_mask, self.tokenizer.drop, pad)

    def _see(self, image: VisionInput) -> tuple[np.ndarray, np.ndarray]:
        if self.vision_session is None:
            self.vision_session = self.load_vision()
        out = self.vision_session.run(image.feeds)
        return out["image_embeds"], out["deepstack_embeds"]


# The graphs every text-to-image run needs (editing adds the VAE encoder).
TEXT_TO_IMAGE = ("transformer_prefix", "transformer_step", "vae_decoder")


@dataclass
class Sessions(Mapping[str, Session]):
    """Component name -> session, each loaded from the backend on first use, and the prompt
    encoder. A new component is one spec and one key, not a new field."""

    encode: Callable[[list[str], list[Image.Image]], EncodedPrompt]
    load: Callable[[str], Session]
    loaded: dict[str, Session] = field(default_factory=dict)
    arrays: Arrays = HOST  # where the sessions' arrays live

    def __getitem__(self, component: str) -> Session:
        if component not in self.loaded:
            self.loaded[component] = self.load(component)
        return self.loaded[component]

    def __iter__(self):
        return iter(self.loaded)

    def __len__(self) -> int:
        return len(self.loaded)

    def replacing(self, **sessions: Session) -> Sessions:
        """The same sessions with some components run elsewhere (a quantized model, a timer)."""
        return Sessions(self.encode, self.load, {**self.loaded, **sessions}, self.arrays)


def generate(
    request: Request,
    facts: ModelFacts,
    sessions: Sessions,
    on_step: Callable[[int, int], None] | None = None,
    check_finite: bool = True,
) -> np.ndarray:
    """Images [B, H, W, 4] float32 in [0, 1]. With `check_finite`, every component's outputs are
    checked for NaN / Inf as they come (one reduction each), and the first fault stops the run."""
    request.validate()
    checked = _Checked(sessions, check_finite)
    sessions = checked.sessions
    batch = len(request.prompts)
    h, w = request.height // PIXELS_PER_TOKEN, request.width // PIXELS_PER_TOKEN
    conditions = [resize_condition(img, request.resolution) for img in request.images]
    cond_latents = _encode_images(sessions, conditions, batch, facts.latent_channels)
    shapes = [(1, c.height // PIXELS_PER_TOKEN, c.width // PIXELS_PER_TOKEN) for c in conditions] + [(1, h, w)]

    branches = [_prefix(sessions, facts, sessions.encode(request.prompts, conditions), cond_latents, shapes)]
    if request.guided:
        negative = sessions.encode([request.negative_prompt] * batch, conditions)
        branches.append(_prefix(sessions, facts, negative, cond_latents, shapes))

    put = sessions.arrays.put
    noise = torch_randn((batch, 1, facts.latent_channels, h, w), request.seed)[:, 0]
    latents = put(np.ascontiguousarray(pack(noise)))  # [B, h*w, C]
    sigmas = schedule_for(facts, h * w, request.steps)
    cfg = float(np.float32(request.cfg))
    step = sessions["transformer_step"]
    for i, t in enumerate(model_timesteps(sigmas)):
        timestep = put(np.full(batch, t, dtype=np.float32))
        checked.step = i + 1
        velocity = [step.run({"latents": latents, "timestep": timestep, **branch})["velocity"] for branch in branches]
        v = velocity[0] if len(velocity) == 1 else velocity[1] + cfg * (velocity[0] - velocity[1])
        latents = latents + float(sigmas[i + 1] - sigmas[i]) * v
        if on_step:
            on_step(i + 1, len(sigmas) - 1)
    image = sessions["vae_decoder"].run({"latents": unpack(latents, h, w)})["image"]
    return sessions.arrays.get((image / 2 + 0.5).clip(0, 1)).transpose(0, 2, 3, 1)


class _Checked:
    """Sessions whose outputs are checked for NaN / Inf; a fault names the component and step."""

    def __init__(self, sessions: Sessions, enabled: bool):
        self.step = 0
        if not enabled:
            self.sessions = sessions
            return
        self.arrays = sessions.arrays

        def load(component: str) -> Session:
            return _CheckedSession(self, component, sessions[component])

        self.sessions = Sessions(self._encode(sessions.encode), load, {}, sessions.arrays)

    def check(self, component: str, name: str, value) -> None:
        if not self.arrays.finite(value):
            when = f" at step {self.step}" if self.step and component == "transformer_step" else ""
            raise NonFiniteError(
                f"{component} produced NaN or Inf in {name}{when}: check the weights and inputs "
                "(--no-check-finite runs on regardless)"
            )

    def _encode(self, encode):
        def checked(prompts, images):
            encoded = encode(prompts, images)
            self.check("condition_encoder", "hidden_states", encoded.embeds)
            return encoded

        return checked


class _CheckedSession:
    def __init__(self, checked: _Checked, component: str, session: Session):
        self.checked, self.component, self.session = checked, component, session

    def run(self, feeds: dict) -> dict:
        outputs = self.session.run(feeds)
        for name, value in outputs.items():
            self.checked.check(self.component, name, value)
        return outputs


def _encode_images(sessions: Sessions, images: list[Image.Image], batch: int, channels: int) -> np.ndarray:
    """Condition images' normalised latents, packed and concatenated: [B, S_cond, C]."""
    if not images:
        return np.zeros((batch, 0, channels), dtype=np.float32)
    encoder, arrays = sessions["vae_encoder"], sessions.arrays
    # Back on the host once, to join the layout's feeds (editing only; small beside the K/V).
    tokens = [pack(arrays.get(encoder.run({"image": arrays.put(image_to_array(img))})["latents"])) for img in images]
    return np.repeat(np.concatenate(tokens, axis=1), batch, axis=0)


def _prefix(sessions: Sessions, facts: ModelFacts, encoded: EncodedPrompt, cond_latents, shapes) -> dict:
    """Everything `step` needs besides latents and timestep: key padding, target RoPE, and every
    output of the prefix graph (its cached K/V)."""
    layout = build_layout(encoded.image_slots, encoded.mask, shapes)
    feeds = transformer_feeds(layout, facts.axes_dims_rope, encoded.embeds, cond_latents)
    put = sessions.arrays.put
    cache = sessions["transformer_prefix"].run({n: put(v) for n, v in feeds.prefix.items()})
    return {**cache, **{n: put(v) for n, v in feeds.step.items()}}
