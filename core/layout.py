"""The joint text/image sequence, laid out on the host in NumPy.

Qwen-Image-2's transformer reads one sequence: the condition encoder's tokens, where each image
slot stands for 2x2 latent tokens of a condition image, followed by the target image's tokens.
Everything about that layout depends only on the prompt's token layout and the image sizes, so it
is computed here once, outside any graph: which row feeds each position, which image block each
position belongs to (for the block-causal mask), which keys are padding, and the 3-axis RoPE
positions with their cos/sin tables. The graphs then see only plain tensors, and the runtime
needs no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from qiedge.core.units import TOKENS_PER_SLOT

ROPE_THETA = 10000
ROPE_MAX_POSITION = 8192  # diffusers' tables cover positions [-1024, 8192)
ROPE_MIN_POSITION = -1024


@dataclass(frozen=True)
class Layout:
    """Layout of one batch's joint sequence (the batch shares it; only key padding differs).

    S_txt: encoder tokens after the system prompt is dropped; S_cond: condition-image latent tokens;
    S_p: prefix tokens (text + condition images, the part cached as K/V); S_tgt: target tokens.
    """

    prefix_gather: np.ndarray  # [S_p] int64: row of cat(text [S_txt], condition latents [S_cond])
    segment_ids: np.ndarray  # [S_p] int64: -1 for text, else the image block's index
    prefix_key_valid: np.ndarray  # [B, S_p] bool: False at padded text
    positions: np.ndarray  # [S_p + S_tgt, 3] int64: (frame, height, width) RoPE positions
    num_target: int

    @property
    def prefix_len(self) -> int:
        return int(self.prefix_gather.shape[0])


def build_layout(
    image_slots: np.ndarray, text_mask: np.ndarray | None, img_shapes: list[tuple[int, int, int]]
) -> Layout:
    """Lay out the joint sequence the way diffusers' `QwenImage21Transformer2DModel` does.

    image_slots: [S_txt] bool, True at the encoder's `<|image_pad|>` slots (shared by the batch).
    text_mask: [B, S_txt] bool, True at real tokens (None: nothing is padded, batch of 1 assumed).
    img_shapes: (frames, height, width) in latent tokens per image, condition images first, target last.
    """
    image_slots = np.asarray(image_slots, dtype=bool)
    if text_mask is None:
        text_mask = np.ones((1, image_slots.shape[0]), dtype=bool)
    text_mask = np.asarray(text_mask, dtype=bool)
    if text_mask.shape[1] != image_slots.shape[0]:
        raise ValueError(f"text mask covers {text_mask.shape[1]} tokens, image slots {image_slots.shape[0]}")
    block_lengths = [f * h * w for f, h, w in img_shapes]
    num_target = block_lengths[-1]
    if num_target % TOKENS_PER_SLOT:
        raise ValueError(f"target image of {img_shapes[-1]} latent tokens does not fill whole 2x2 slots")
    if int(image_slots.sum()) * TOKENS_PER_SLOT != sum(block_lengths[:-1]):
        raise ValueError(
            f"the prompt has {int(image_slots.sum())} image slots, but the condition images need "
            f"{sum(block_lengths[:-1]) // TOKENS_PER_SLOT}"
        )

    # The target's slots follow every encoder token, padding included, exactly as diffusers appends them.
    slots = np.concatenate([image_slots, np.ones(num_target // TOKENS_PER_SLOT, dtype=bool)])
    repeats = np.where(slots, TOKENS_PER_SLOT, 1)
    is_image = np.repeat(slots, repeats)  # [S_joint]
    joint_len = is_image.shape[0]
    prefix_len = joint_len - num_target

    text_rows = np.flatnonzero(~image_slots)  # encoder rows that stay text, in order
    source = np.empty(joint_len, dtype=np.int64)
    source[~is_image] = text_rows
    source[is_image] = image_slots.shape[0] + np.arange(int(is_image.sum()))

    segment_ids = np.full(joint_len, -1, dtype=np.int64)
    segment_ids[is_image] = np.repeat(np.arange(len(block_lengths)), block_lengths)

    key_valid = np.ones((text_mask.shape[0], joint_len), dtype=bool)
    key_valid[:, ~is_image] = text_mask[:, text_rows]

    return Layout(
        prefix_gather=source[:prefix_len],
        segment_ids=segment_ids[:prefix_len],
        prefix_key_valid=key_valid[:, :prefix_len],
        positions=_rope_positions(is_image, img_shapes),
        num_target=num_target,
    )


def _rope_positions(is_image: np.ndarray, img_shapes: list[tuple[int, int, int]]) -> np.ndarray:
    """Text advances one position on all three axes; each image block freezes the frame axis at
    the running position, centres its height/width grid on zero, then moves the position on by
    max(h, w)."""
    joint_len = is_image.shape[0]
    positions = np.empty((joint_len, 3), dtype=np.int64)
    cursor = position = 0
    for frames, height, width in img_shapes:
        start = cursor + int(np.argmax(is_image[cursor:]))
        text = np.arange(position, position + start - cursor)
        positions[cursor:start] = text[:, None]
        position += start - cursor
        count = frames * height * width
        rows = np.repeat(np.arange(-(height - height // 2), height // 2), width)
        cols = np.tile(np.arange(-(width - width // 2), width // 2), height)
        block = positions[start : start + count]
        block[:, 0] = position
        block[:, 1] = np.tile(rows, frames)
        block[:, 2] = np.tile(cols, frames)
        position += max(height, width)
        cursor = start + count
    positions[cursor:] = np.arange(position, position + joint_len - cursor)[:, None]
    return positions


def rope_inverse_frequencies(axis_dim: int) -> np.ndarray:
    """[axis_dim // 2] float32: the correctly rounded values diffusers' float32 `torch.pow` path means.

    NumPy's float32 `power` can differ from torch's by an ulp, and at position ~8000 an ulp of
    frequency is ~1e-3 rad; a float64 power rounded once to float32 matches torch bit for bit where
    torch's vectorized pow rounds correctly (its AVX-512 kernels), and to an ulp elsewhere (its AVX2
    kernel rounds one value of 28 the other way).
    """
    exponents = np.arange(0, axis_dim, 2, dtype=np.float32) / np.float32(axis_dim)
    powers = (np.float64(ROPE_THETA) ** exponents.astype(np.float64)).astype(np.float32)
    return np.float32(1.0) / powers


def rope_tables(positions: np.ndarray, axes_dims: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [S, head_dim // 2] float32 for positions [S, 3].

    The angle is a float32 product, as in diffusers, so tables match its complex ones to an ulp.
    """
    if positions.size and (positions.min() < ROPE_MIN_POSITION or positions.max() >= ROPE_MAX_POSITION):
        raise ValueError(
            f"RoPE positions span [{positions.min()}, {positions.max()}], outside the model's "
            f"[{ROPE_MIN_POSITION}, {ROPE_MAX_POSITION}): prompt or image too large"
        )
    angles = np.concatenate(
        [
            positions[:, axis].astype(np.float32)[:, None] * rope_inverse_frequencies(dim)[None, :]
            for axis, dim in enumerate(axes_dims)
        ],
        axis=1,
    )
    return np.cos(angles), np.sin(angles)


@dataclass(frozen=True)
class TransformerFeeds:
    """A layout turned into graph inputs: the prefix graph's, and the step graph's besides latents,
    timestep and the prefix's K/V."""

    prefix: dict[str, np.ndarray]
    step: dict[str, np.ndarray]

    def one_shot(self) -> dict[str, np.ndarray]:
        """The one-shot graph's inputs besides latents and timestep (no cache: both RoPE ranges)."""
        feeds = {k: v for k, v in self.prefix.items() if not k.startswith("rope_")}
        return {
            **feeds,
            "prefix_rope_cos": self.prefix["rope_cos"],
            "prefix_rope_sin": self.prefix["rope_sin"],
            "target_rope_cos": self.step["rope_cos"],
            "target_rope_sin": self.step["rope_sin"],
        }


def transformer_feeds(
    layout: Layout, axes_dims: tuple[int, ...], text: np.ndarray, cond_latents: np.ndarray
) -> TransformerFeeds:
    """text: [B, S_txt, context] encoder states; cond_latents: [B, S_cond, C] packed condition latents."""
    cos, sin = rope_tables(layout.positions, axes_dims)
    p = layout.prefix_len
    prefix = {
        "text": text,
        "cond_latents": cond_latents,
        "prefix_gather": layout.prefix_gather,
        "segment_ids": layout.segment_ids,
        "key_valid": layout.prefix_key_valid,
        "rope_cos": cos[:p],
        "rope_sin": sin[:p],
    }
    step = {"key_valid": layout.prefix_key_valid, "rope_cos": cos[p:], "rope_sin": sin[p:]}
    return TransformerFeeds(prefix, step)
