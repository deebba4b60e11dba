"""Parity cases: fresh, valid inputs for each graph at several sizes and prompt lengths. Each
`ComponentSpec` names its generator, so the parity checks run every component without knowing it.

Torch-free: the inputs are drawn in NumPy, laid out by the core's `transformer_feeds`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image
from qiedge.core.artifacts import ModelFacts
from qiedge.core.layout import build_layout, transformer_feeds
from qiedge.core.tokenizer import PromptTokenizer
from qiedge.core.units import PIXELS_PER_TOKEN, TOKENS_PER_SLOT
from qiedge.core.vision import image_index, image_tables, mrope_positions, vision_input

Case = tuple[str, dict[str, np.ndarray]]

PROMPTS = (
    ["a red circle"],
    ["a red circle on the left on a blue background", "hi"],
    ["the word HELLO in white on a black background, " * 12],
)
TRANSFORMER_LAYOUTS = (
    # (batch, text length, valid lengths, condition grids, target grid)
    (2, 11, [11, 6], [], (4, 6)),
    (1, 40, [40], [], (8, 8)),
    (1, 20, [20], [(4, 4)], (6, 4)),
)
VAE_GRIDS = ((4, 4), (2, 6), (8, 4))
# The step graph's case carries the prefix graph's inputs under this key: the step consumes a
# real cache, which the checks build with the reference's own prefix session (the spec's `cache_from`).
PREFIX = "prefix"


@dataclass(frozen=True)
class CaseContext:
    facts: ModelFacts
    context: int  # the condition encoder's hidden size: the transformer's `context_in_dim`
    image_channels: int


# Condition images' patch grids (t, h, w): landscape, portrait, the smallest.
VISION_GRIDS = ((1, 4, 6), (1, 10, 4), (1, 2, 2))


def encoder(ctx: CaseContext, seed: int = 0) -> Iterator[Case]:
    """Text-only prompts, then a batch of two with two condition images (random vision features)."""
    rng = np.random.default_rng(seed)
    tokenizer = PromptTokenizer(ctx.facts.tokenizer_json)
    vision = ctx.facts.vision
    for prompts, grids in [(p, ()) for p in PROMPTS] + [(["make it blue", "x"], VISION_GRIDS[:2])]:
        tokens = [h * w // vision.merge_size**2 for _, h, w in grids]
        t = tokenizer(prompts, tokens)
        features = [
            (
                rng.standard_normal((n, ctx.context), dtype=np.float32),
                rng.standard_normal((vision.deepstack, n, ctx.context), dtype=np.float32),
            )
            for n in tokens
        ]
        embeds, deepstack = image_tables(features, ctx.context, vision.deepstack)
        feeds = {
            "input_ids": t.input_ids,
            "attention_mask": t.attention_mask,
            "position_ids": mrope_positions(
                t.input_ids, t.attention_mask, tokenizer.image_pad_id, grids, vision.merge_size
            ),
            "image_embeds": embeds,
            "deepstack_embeds": deepstack,
            "image_index": image_index(t.input_ids, tokenizer.image_pad_id),
        }
        yield f"{len(prompts)}x{t.input_ids.shape[1]} tokens, {len(grids)} images", feeds


def vision_encoder(ctx: CaseContext, seed: int = 0) -> Iterator[Case]:
    rng = np.random.default_rng(seed)
    p = ctx.facts.vision.patch_size
    for _, h, w in VISION_GRIDS:
        image = Image.fromarray(rng.integers(0, 256, (h * p, w * p, 3), dtype=np.uint8))
        yield f"{w * p}x{h * p} image", vision_input(image, ctx.facts.vision).feeds


def _transformer(ctx: CaseContext, seed: int = 0):
    """(name, layout feeds, latents, timestep) for each layout of TRANSFORMER_LAYOUTS."""
    rng = np.random.default_rng(seed)
    channels = ctx.facts.latent_channels
    for batch, text_len, lengths, conditions, (h, w) in TRANSFORMER_LAYOUTS:
        text = rng.standard_normal((batch, text_len, ctx.context), dtype=np.float32)
        mask = np.zeros((batch, text_len), dtype=bool)
        for b, n in enumerate(lengths):
            mask[b, :n] = True
            text[b, n:] = 0
        slots = np.zeros(text_len, dtype=bool)
        start = 3
        for ch, cw in conditions:
            slots[start : start + ch * cw // TOKENS_PER_SLOT] = True
            start += ch * cw // TOKENS_PER_SLOT + 1
        layout = build_layout(slots, mask, [(1, ch, cw) for ch, cw in conditions] + [(1, h, w)])
        cond = rng.standard_normal((batch, sum(a * b for a, b in conditions), channels), dtype=np.float32)
        feeds = transformer_feeds(layout, ctx.facts.axes_dims_rope, text, cond)
        step = {
            "latents": rng.standard_normal((batch, h * w, channels), dtype=np.float32),
            "timestep": rng.uniform(0.02, 1.0, batch).astype(np.float32),
        }
        yield f"b{batch} text {text_len} cond {len(conditions)} target {h}x{w}", feeds, step


def transformer_prefix(ctx: CaseContext) -> Iterator[Case]:
    for name, feeds, _ in _transformer(ctx):
        yield name, feeds.prefix


def transformer_step(ctx: CaseContext) -> Iterator[Case]:
    for name, feeds, step in _transformer(ctx):
        yield name, {**step, **feeds.step, PREFIX: feeds.prefix}


def transformer(ctx: CaseContext) -> Iterator[Case]:
    for name, feeds, step in _transformer(ctx):
        yield name, {**step, **feeds.one_shot()}


def vae_decoder(ctx: CaseContext, seed: int = 0) -> Iterator[Case]:
    rng = np.random.default_rng(seed)
    for h, w in VAE_GRIDS:
        yield (
            f"{h}x{w} latents",
            {"latents": rng.standard_normal((1, ctx.facts.latent_channels, h, w), dtype=np.float32)},
        )


def vae_encoder(ctx: CaseContext, seed: int = 0) -> Iterator[Case]:
    rng = np.random.default_rng(seed)
    for h, w in VAE_GRIDS:
        shape = (1, ctx.image_channels, PIXELS_PER_TOKEN * h, PIXELS_PER_TOKEN * w)
        yield (
            f"{PIXELS_PER_TOKEN * h}x{PIXELS_PER_TOKEN * w} image",
            {"image": rng.uniform(-1, 1, shape).astype(np.float32)},
        )
