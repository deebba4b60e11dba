"""The transformer (one-shot, and prefix + step) against diffusers' QwenImage21Transformer2DModel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from qiedge.core.layout import build_layout, rope_tables

from .conftest import FP32_REL_L2, rel_l2

CASES = {
    # name: (batch, text length, padded lengths per sample, condition shapes, target (h, w))
    "square_b1": (1, 9, [9], [], (4, 4)),
    "nonsquare_b2_padded": (2, 12, [12, 7], [], (4, 6)),
    "edit_b2_padded": (2, 14, [14, 11], [(2, 4)], (6, 4)),
    "two_conditions": (1, 16, [16], [(2, 2), (4, 2)], (2, 4)),
}


def _inputs(transformer, batch, text_len, lengths, conditions, target, seed=0):
    g = torch.Generator().manual_seed(seed)
    ctx = transformer.config.context_in_dim
    channels = transformer.config.in_channels
    text = torch.randn(batch, text_len, ctx, generator=g)
    mask = torch.zeros(batch, text_len, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, :n] = True
        text[b, n:] = 0
    slots = np.zeros(text_len, dtype=bool)
    start = 3
    for h, w in conditions:  # condition images sit in slots early in the prompt, as the template puts them
        slots[start : start + h * w // 4] = True
        start += h * w // 4 + 2
    cond = torch.randn(batch, sum(h * w for h, w in conditions), channels, generator=g)
    latents = torch.randn(batch, target[0] * target[1], channels, generator=g)
    timestep = torch.rand(batch, generator=g)
    shapes = [(1, h, w) for h, w in conditions] + [(1, *target)]
    return text, mask, slots, cond, latents, timestep, shapes


def _reference(diffusers_pipe, text, mask, slots, cond, latents, timestep, shapes):
    batch = text.shape[0]
    img_mask = torch.cat([torch.from_numpy(slots), torch.ones(latents.shape[1] // 4, dtype=torch.bool)])
    out = diffusers_pipe.transformer(
        hidden_states=torch.cat([cond, latents], dim=1),
        encoder_hidden_states=text,
        timestep=timestep,
        img_shapes=[shapes] * batch,
        img_mask=img_mask[None].repeat(batch, 1),
        encoder_hidden_states_mask=None if mask.all() else mask,
        return_dict=False,
    )[0]
    return out[:, -latents.shape[1] :]


@pytest.mark.parametrize("case", CASES)
def test_one_shot_and_cached_match_diffusers(case, transformer, diffusers_pipe):
    text, mask, slots, cond, latents, timestep, shapes = _inputs(transformer, *CASES[case])
    expected = _reference(diffusers_pipe, text, mask, slots, cond, latents, timestep, shapes)

    layout = build_layout(slots, mask.numpy(), shapes)
    cos, sin = (torch.from_numpy(t) for t in rope_tables(layout.positions, transformer.config.axes_dims_rope))
    gather, segments = torch.from_numpy(layout.prefix_gather), torch.from_numpy(layout.segment_ids)
    key_valid = torch.from_numpy(layout.prefix_key_valid)
    cond = cond if cond.shape[1] else None
    one_shot = transformer(latents, timestep, text, cond, gather, segments, key_valid, cos, sin)
    p = layout.prefix_len
    keys, values = transformer.prefix(text, cond, gather, segments, key_valid, cos[:p], sin[:p])
    cached = transformer.step(latents, timestep, keys, values, key_valid, cos[p:], sin[p:])

    assert rel_l2(one_shot, expected) <= FP32_REL_L2
    assert rel_l2(cached, expected) <= FP32_REL_L2
    assert rel_l2(cached, one_shot) <= FP32_REL_L2


def test_rope_tables_match_diffusers_everywhere(diffusers_pipe):
    """cos/sin for every position the model's tables cover, against diffusers' complex tables."""
    rope = diffusers_pipe.transformer.pos_embed
    positions = np.concatenate([np.arange(8192), -1 - np.arange(1024)[::-1]])
    cos, sin = rope_tables(np.repeat(positions[:, None], 3, axis=1), tuple(rope.axes_dim))
    expected = torch.cat([f[torch.from_numpy(positions)] for f in rope.freqs], dim=-1)
    np.testing.assert_allclose(cos, expected.real.numpy(), atol=2e-6)
    np.testing.assert_allclose(sin, expected.imag.numpy(), atol=2e-6)
