"""One small module per exported graph: plain tensors in, plain tensors out.

Each wrapper calls the reference component unchanged, so its parameter names are the reference's
state-dict keys (plus a fixed prefix), which is how weights are bound to the graph later.
"""

from __future__ import annotations

import torch
from qiedge.reference_model.condition_encoder import without_final_norm
from torch import nn


class ConditionEncoderGraph(nn.Module):
    """Qwen3-VL text path: token ids -> last decoder layer's hidden states, before the final norm.

    position_ids [3, B, S] are the M-RoPE positions, computed on the host (for text alone all three
    rows are cumsum(mask) - 1).
    """

    def __init__(self, vl_model: nn.Module):
        super().__init__()
        # Qwen3VLModel's text path alone, so its keys stay `model.language_model.*` and the vision
        # tower's weights are not part of this graph.
        self.model = nn.Module()
        self.model.language_model = vl_model.language_model

    def forward(self, input_ids, attention_mask, position_ids):
        text = self.model.language_model
        with without_final_norm(text):
            return text(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).last_hidden_state


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
