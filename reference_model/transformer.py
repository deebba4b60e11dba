"""Qwen-Image-2's diffusion transformer, state-dict compatible with diffusers'
`QwenImage21Transformer2DModel`.

Single stream: text and condition-image tokens (the prefix) and the target image's tokens share
one sequence and one set of weights. Modulation is shared by all blocks and scale-only, gates go
through tanh, and the prefix is modulated at t=0 (`causal_condition`), so with the block-causal
mask its keys and values never change across sampling steps: `prefix` computes them once, `step`
reuses them every step, and `forward` does both in one pass.

Deviation from diffusers, on purpose: RoPE is applied in real arithmetic from host-computed
cos/sin tables (no complex tensors, so every graph exports), and the joint sequence is assembled
by a host-computed gather index instead of boolean scatter. Both are exact rewrites.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .presets import TransformerConfig

TIMESTEP_CHANNELS = 256


def timestep_embedding(t: torch.Tensor, channels: int = TIMESTEP_CHANNELS) -> torch.Tensor:
    """Sinusoidal embedding of sigma in [0, 1]: [cos, sin] of 1000 * t * 10000^(-i / half), in fp32."""
    half = channels // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (1000.0 * t.float())[:, None] * freqs[None]  # [B, half]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs (2k, 2k+1) of x [B, S, H, D] by angles given as cos/sin [S, D/2].

    The real form of diffusers' `view_as_complex(x) * freqs`, in fp32 as there.
    """
    pairs = x.float().unflatten(-1, (-1, 2))  # [B, S, H, D/2, 2]
    real, imag = pairs[..., 0], pairs[..., 1]
    cos, sin = cos[:, None], sin[:, None]  # [S, 1, D/2]
    rotated = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1)
    return rotated.flatten(-2).type_as(x)


def block_causal_mask(segment_ids: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
    """[B, 1, S, S] bool, True = attend: causal, except that tokens of one image block see each other.

    segment_ids: [S] int64, -1 for text, else the image block; key_valid: [B, S] bool.
    """
    index = torch.arange(segment_ids.shape[0], device=segment_ids.device)
    causal = index[:, None] >= index[None, :]
    same_image = (segment_ids[:, None] == segment_ids[None, :]) & (segment_ids[:, None] >= 0)
    return ((causal | same_image)[None] & key_valid[:, None, :])[:, None]


class RMSNorm(nn.Module):
    """RMSNorm over the last axis in fp32; `zero_centered` stores scale - 1 (txt_in's norm)."""

    def __init__(self, dim: int, eps: float, zero_centered: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim) if zero_centered else torch.ones(dim))
        self.eps = eps
        self.zero_centered = zero_centered

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.zero_centered:
            return (y * (self.weight.float() + 1)).to(x.dtype)
        return (y.to(self.weight.dtype) * self.weight).to(x.dtype)


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(TIMESTEP_CHANNELS, dim, bias=False)
        self.linear_2 = nn.Linear(dim, dim, bias=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t).to(t.dtype)  # t arrives in the model's dtype (`_temb`)
        return self.linear_2(F.silu(self.linear_1(emb)))


class TimeTextEmbed(nn.Module):
    """Holds only the timestep embedder; the name is the checkpoint's."""

    def __init__(self, dim: int):
        super().__init__()
        self.timestep_embedder = TimestepEmbedder(dim)


class TextProjection(nn.Module):
    def __init__(self, context_dim: int, dim: int, eps: float):
        super().__init__()
        self.text_norm = RMSNorm(context_dim, eps, zero_centered=True)
        self.in_layer = nn.Linear(context_dim, dim, bias=False)
        self.out_layer = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_layer(F.gelu(self.in_layer(self.text_norm(x)), approximate="tanh"))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, eps: float):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, heads * head_dim, bias=False)
        self.to_k = nn.Linear(dim, heads * head_dim, bias=False)
        self.to_v = nn.Linear(dim, heads * head_dim, bias=False)
        self.norm_q = RMSNorm(head_dim, eps)
        self.norm_k = RMSNorm(head_dim, eps)
        # A list, not a Linear, so the checkpoint key stays `to_out.0`.
        self.to_out = nn.ModuleList([nn.Linear(heads * head_dim, dim, bias=False)])

    def qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Queries, keys, values [B, H, S, D], with QK-norm and RoPE applied."""
        q = self.norm_q(self.to_q(x).unflatten(-1, (self.heads, -1)))  # [B, S, H, D]
        k = self.norm_k(self.to_k(x).unflatten(-1, (self.heads, -1)))
        v = self.to_v(x).unflatten(-1, (self.heads, -1))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, H, S_q, D]
        return self.to_out[0](out.transpose(1, 2).flatten(2))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(dim, hidden, bias=False)
        self.gate_layer = nn.Linear(dim, hidden, bias=False)
        self.out = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.silu(self.gate_layer(x)) * self.proj(x))


class TransformerBlock(nn.Module):
    """x += tanh(g1) * Attn(LN(x) * (1 + s1));  x += tanh(g2) * MLP(LN(x) * (1 + s2))."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        dim = config.inner_dim
        self.eps = config.eps
        self.attn = Attention(dim, config.num_attention_heads, config.attention_head_dim, config.eps)
        self.img_mlp = SwiGLU(dim, dim * config.mlp_ratio)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], eps=self.eps)

    def forward(self, x, mod, cos, sin, mask, past_kv=None, return_kv=False):
        """x [B, S, dim]; mod [B or 1, S or 1, 4*dim] = (scale1, gate1, scale2, gate2).

        past_kv: the prefix's (k, v) [B, H, S_p, D], prepended to this pass's keys and values.
        """
        scale1, gate1, scale2, gate2 = mod.chunk(4, dim=-1)
        q, k, v = self.attn.qkv(self._norm(x) * (1 + scale1), cos, sin)
        kv = (k, v)
        if past_kv is not None:
            k, v = torch.cat([past_kv[0], k], dim=2), torch.cat([past_kv[1], v], dim=2)
        x = x + gate1.tanh() * self.attn.attend(q, k, v, mask)
        x = x + gate2.tanh() * self.img_mlp(self._norm(x) * (1 + scale2))
        if x.dtype == torch.float16:
            x = x.clip(-65504, 65504)
        return (x, kv) if return_kv else x


class FinalLayer(nn.Module):
    """`norm_out`: LN(x) * (1 + linear(SiLU(temb))), scale only."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.linear = nn.Linear(dim, dim, bias=False)
        self.eps = eps

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        scale = self.linear(F.silu(temb)).to(x.dtype)[:, None]  # [B, 1, dim]
        return F.layer_norm(x, x.shape[-1:], eps=self.eps) * (1 + scale)


class QwenImage2Transformer(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        dim = config.inner_dim
        self.img_in = nn.Linear(config.in_channels, dim, bias=False)
        self.txt_in = TextProjection(config.context_in_dim, dim, config.eps)
        self.time_text_embed = TimeTextEmbed(dim)
        # Sequential(SiLU, Linear): the checkpoint key is `modulation.1`.
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 4 * dim, bias=False))
        self.transformer_blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.num_layers))
        self.norm_out = FinalLayer(dim, config.eps)
        self.proj_out = nn.Linear(dim, config.out_channels, bias=False)

    def _temb(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.time_text_embed.timestep_embedder(t.to(like.dtype))

    def _prefix_tokens(self, text, cond_latents, gather):
        """Embedded prefix [B, S_p, dim]: text rows and condition-image rows in joint order."""
        rows = [self.txt_in(text)]
        if cond_latents is not None and cond_latents.shape[1]:
            rows.append(self.img_in(cond_latents))
        return torch.cat(rows, dim=1)[:, gather]

    def prefix(self, text, cond_latents, gather, segment_ids, key_valid, cos, sin):
        """Per-layer keys and values of the prefix, each [L, B, H, S_p, D].

        text [B, S_txt, ctx]; cond_latents [B, S_cond, C] or None; gather/segment_ids [S_p];
        key_valid [B, S_p]; cos/sin [S_p, D/2].
        """
        x, mod = self.prefix_embed(text, cond_latents, gather)
        _, keys, values = self.prefix_blocks(x, mod, segment_ids, key_valid, cos, sin, range(self.config.num_layers))
        return keys, values

    def prefix_embed(self, text, cond_latents, gather):
        """The embedded prefix [B, S_p, dim] and its modulation [1, 1, 4*dim] (at t = 0)."""
        x = self._prefix_tokens(text, cond_latents, gather)
        return x, self.modulation(self._temb(torch.zeros(1, device=x.device), x))[:, None]

    def prefix_blocks(self, x, mod, segment_ids, key_valid, cos, sin, layers: range):
        """The prefix through blocks `layers`: (x, their keys [l, B, H, S_p, D], their values)."""
        mask = block_causal_mask(segment_ids, key_valid)
        keys, values = [], []
        for i in layers:
            x, (k, v) = self.transformer_blocks[i](x, mod, cos, sin, mask, return_kv=True)
            keys.append(k)
            values.append(v)
        return x, torch.stack(keys), torch.stack(values)

    def step(self, latents, timestep, past_keys, past_values, key_valid, cos, sin):
        """Velocity [B, S_tgt, C] of the target tokens, attending to the cached prefix.

        latents [B, S_tgt, C]; timestep [B] (sigma); past_keys/values [L, B, H, S_p, D];
        key_valid [B, S_p]; cos/sin [S_tgt, D/2] for the target positions.
        """
        x, temb, mod = self.step_embed(latents, timestep)
        x = self.step_blocks(x, mod, past_keys, past_values, key_valid, cos, sin, range(self.config.num_layers))
        return self.step_out(x, temb)

    def step_embed(self, latents, timestep):
        """The embedded target [B, S_tgt, dim], the timestep embedding [B, dim], its modulation [B, 1, 4*dim]."""
        x = self.img_in(latents)
        temb = self._temb(timestep, x)
        return x, temb, self.modulation(temb)[:, None]

    def step_blocks(self, x, mod, past_keys, past_values, key_valid, cos, sin, layers: range):
        """The target through blocks `layers`; past_keys/values hold those layers' cache, in order.

        key_valid None: no prefix key is padded, so attention needs no mask (and may run fused).
        """
        # Target queries see every valid prefix key and the whole target block.
        mask = None
        if key_valid is not None:
            valid = torch.cat([key_valid, key_valid.new_ones(key_valid.shape[0], x.shape[1])], dim=1)
            mask = valid[:, None, None, :]
        for j, i in enumerate(layers):
            x = self.transformer_blocks[i](x, mod, cos, sin, mask, past_kv=(past_keys[j], past_values[j]))
        return x

    def step_out(self, x, temb):
        return self.proj_out(self.norm_out(x, temb))

    def forward(self, latents, timestep, text, cond_latents, gather, segment_ids, key_valid, cos, sin):
        """The one-shot pass over the whole joint sequence, without a cache.

        Same arguments as `prefix` and `step`, with cos/sin [S_p + S_tgt, D/2] for all positions.
        """
        prefix = self._prefix_tokens(text, cond_latents, gather)
        target = self.img_in(latents)
        x = torch.cat([prefix, target], dim=1)
        temb = self._temb(timestep, x)
        mod_t = self.modulation(temb)[:, None]  # [B, 1, 4*dim]
        mod_0 = self.modulation(self._temb(torch.zeros(1, device=x.device), x))[:, None]
        is_target = torch.arange(x.shape[1], device=x.device) >= prefix.shape[1]
        mod = torch.where(is_target[None, :, None], mod_t, mod_0)  # [B, S, 4*dim]
        # Any id no prefix block uses marks the target block; the prefix length is one.
        ids = torch.cat([segment_ids, segment_ids.new_full((target.shape[1],), prefix.shape[1])])
        valid = torch.cat([key_valid, key_valid.new_ones(key_valid.shape[0], target.shape[1])], dim=1)
        mask = block_causal_mask(ids, valid)
        for block in self.transformer_blocks:
            x = block(x, mod, cos, sin, mask)
        return self.proj_out(self.norm_out(x[:, prefix.shape[1] :], temb))
