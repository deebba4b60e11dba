"""One small module per exported graph: plain tensors in, plain tensors out.

Each wrapper calls the reference component unchanged, so its parameter names are the reference's
state-dict keys (plus a fixed prefix), which is how weights are bound to the graph later.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from qiedge.reference_model.condition_encoder import without_final_norm
from torch import nn


@contextlib.contextmanager
def deepstack_added(layers: nn.ModuleList, features, index, slots, owned: range):
    """Add each vision deepstack feature to the output of the decoder layer of the same number, at
    the image tokens, for the layers in `owned`: what Qwen3VLTextModel does with
    `deepstack_visual_embeds`, written as a gather instead of its boolean indexing, whose
    data-dependent shape no exporter keeps."""

    def adder(i: int):
        return lambda module, args, output: torch.where(slots, output + features[i][index], output)

    handles = [layers[i].register_forward_hook(adder(i)) for i in range(features.shape[0]) if i in owned]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class ConditionEncoderGraph(nn.Module):
    """Qwen3-VL's language model: token ids and vision features -> the last decoder layer's hidden
    states, before the final norm.

    position_ids [3, B, S] are the M-RoPE positions and image_index [B, S] each token's row of the
    image tables (0, a zero row, for text), both computed on the host (core/vision.py).
    """

    def __init__(self, vl_model: nn.Module):
        super().__init__()
        # Qwen3VLModel's language model alone, so its keys stay `model.language_model.*` and the
        # vision tower's weights are another graph's.
        self.model = nn.Module()
        self.model.language_model = vl_model.language_model

    def forward(self, input_ids, attention_mask, position_ids, image_embeds, deepstack_embeds, image_index):
        text = self.model.language_model
        embeds = embedded(text, input_ids, image_embeds, image_index)
        layers = range(len(text.layers))
        return decoded(text, embeds, attention_mask, position_ids, deepstack_embeds, image_index, layers)


def embedded(text: nn.Module, input_ids, image_embeds, image_index):
    """The prompt's embeddings, image rows (image_index > 0) taken from the vision tower's table."""
    slots = (image_index > 0).unsqueeze(-1)
    return torch.where(slots, image_embeds[image_index], text.embed_tokens(input_ids))


def decoded(text: nn.Module, embeds, attention_mask, position_ids, deepstack_embeds, image_index, owned: range):
    """Embeddings through the language model's decoder layers, before its final norm; the deepstack
    features (None: none) are added after those of the layers in `owned` that take one (a chunk's
    other layers pass the hidden states through)."""
    added = contextlib.nullcontext()
    if deepstack_embeds is not None:
        slots = (image_index > 0).unsqueeze(-1)
        added = deepstack_added(text.layers, deepstack_embeds, image_index, slots, owned)
    with without_final_norm(text), added:
        return text(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state


def vision_attention(attn: nn.Module, x, cos, sin):
    """Qwen3VLVisionAttention over one image: transformers splits its packed sequence per image by
    values read at run time (`cu_seqlens.tolist()`), which no exporter keeps; the vision graph
    takes one image at a time, so its attention is one plain call."""
    from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb_vision

    n = x.shape[0]
    q, k, v = attn.qkv(x).reshape(n, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
    q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, scale=attn.scaling)
    return attn.proj(out.transpose(1, 2).reshape(n, -1))


class VisionEncoderGraph(nn.Module):
    """Qwen3-VL's vision tower over one image's patches (merge-block order, as the processor lays
    them): patch embedding plus the learned positions resampled by host-computed taps, the blocks
    with host-computed 2D rotary angles, the 2x2 merger, and the deepstack features."""

    def __init__(self, vl_model: nn.Module):
        super().__init__()
        self.model = nn.Module()
        self.model.visual = vl_model.visual

    def forward(self, pixel_values, position_indices, position_weights, rope_cos, rope_sin):
        visual = self.model.visual
        x = visual.patch_embed(pixel_values)
        x = x + (visual.pos_embed(position_indices) * position_weights[:, :, None]).sum(1).to(x.dtype)
        features = []
        for i, block in enumerate(visual.blocks):
            x = x + vision_attention(block.attn, block.norm1(x), rope_cos, rope_sin)
            x = x + block.mlp(block.norm2(x))
            if i in visual.deepstack_visual_indexes:
                features.append(visual.deepstack_merger_list[visual.deepstack_visual_indexes.index(i)](x))
        return visual.merger(x), torch.stack(features)


class TransformerPrefixGraph(nn.Module):
    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer

    def forward(self, text, cond_latents, prefix_gather, segment_ids, key_valid, rope_cos, rope_sin):
        return self.transformer.prefix(text, cond_latents, prefix_gather, segment_ids, key_valid, rope_cos, rope_sin)


class TransformerStepGraph(nn.Module):
    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer

    def forward(self, latents, timestep, past_keys, past_values, key_valid, rope_cos, rope_sin):
        return self.transformer.step(latents, timestep, past_keys, past_values, key_valid, rope_cos, rope_sin)


class TransformerGraph(nn.Module):
    """The one-shot pass (no cache), for targets that cannot keep K/V between steps.

    RoPE tables come in two parts because the exporter cannot express prefix + target as one dim.
    """

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer

    def forward(
        self,
        latents,
        timestep,
        text,
        cond_latents,
        prefix_gather,
        segment_ids,
        key_valid,
        prefix_rope_cos,
        prefix_rope_sin,
        target_rope_cos,
        target_rope_sin,
    ):
        cos = torch.cat([prefix_rope_cos, target_rope_cos])
        sin = torch.cat([prefix_rope_sin, target_rope_sin])
        return self.transformer(latents, timestep, text, cond_latents, prefix_gather, segment_ids, key_valid, cos, sin)


class VaeEncoderGraph(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, image):
        return self.vae.encode(image)


class VaeDecoderGraph(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, latents):
        return self.vae.decode(latents)
