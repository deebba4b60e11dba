"""Qwen-Image-2's VAE (16x spatial, 64 latent channels, RGBA), state-dict compatible with
diffusers' `AutoencoderKLQwenImage21`.

diffusers' class is a video VAE specialised to single frames; this one works on images directly
([B, C, H, W]). For one frame the two are the same computation: the causal 3D convolutions are
already 2D there, the temporal convolutions never run (their weights are kept so checkpoints load
strictly), and the temporal halves of the residual shortcuts reduce to what `_avg_down` and
`_dup_up` write out below.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .presets import VAEConfig


class RMSNorm(nn.Module):
    """Channel RMS norm: F.normalize over channels * sqrt(C) * gamma (fp32 for half inputs)."""

    def __init__(self, dim: int, gamma_shape: tuple[int, ...]):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim, *gamma_shape))
        self.scale = dim**0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normalized = F.normalize(x.float(), dim=1).to(x.dtype)
        return normalized * self.scale * self.gamma.view(-1, 1, 1)


def _video_norm(dim: int) -> RMSNorm:
    return RMSNorm(dim, (1, 1, 1))  # checkpoint shape [C, 1, 1, 1]


class ResidualBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.norm1 = _video_norm(in_dim)
        self.conv1 = nn.Conv2d(in_dim, out_dim, 3, padding=1)
        self.norm2 = _video_norm(out_dim)
        self.conv2 = nn.Conv2d(out_dim, out_dim, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.conv_shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, (1, 1))
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.to_qkv(self.norm(x)).flatten(2).transpose(1, 2)[:, None]  # [B, 1, HW, 3C]
        q, k, v = qkv.chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v)[:, 0]  # [B, HW, C]
        return x + self.proj(out.transpose(1, 2).reshape(b, c, h, w))


class MidBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.resnets = nn.ModuleList([ResidualBlock(dim, dim), ResidualBlock(dim, dim)])
        self.attentions = nn.ModuleList([AttentionBlock(dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class Resample(nn.Module):
    """Stride-2 down or nearest x2 up, then a 3x3 conv. `time_conv` only acts across frames,
    never on a single image; it is kept because checkpoints carry it."""

    def __init__(self, dim: int, mode: str, temporal: bool):
        super().__init__()
        self.mode = mode
        if mode == "up":
            # Nearest-exact and nearest agree at an integer factor of 2; plain nearest exports everywhere.
            self.resample = nn.Sequential(
                nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(dim, dim, 3, padding=1)
            )
            if temporal:
                self.time_conv = nn.Conv2d(dim, dim * 2, 1)
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
            if temporal:
                self.time_conv = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "up":
            return self.resample[1](self.resample[0](x.float()).type_as(x))
        return self.resample(x)


def _avg_down(x: torch.Tensor, out_dim: int, temporal: bool) -> torch.Tensor:
    """Parameter-free shortcut: fold 2x2 pixels into channels and average channel groups.

    With temporal downsampling the video VAE also folds a zero frame (the causal padding in front
    of the single frame) into the channels, so half of every group is zeros. Written in tensors of
    rank <= 5, which every target (Core ML included) can hold.
    """
    b, c, h, w = x.shape
    x = x.reshape(b * c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3)  # [B*C, 2, 2, h, w]
    x = x.reshape(b, c, 4, h // 2, w // 2)
    if temporal:
        x = torch.cat([torch.zeros_like(x), x], dim=2)  # [B, C, 2t * 2 * 2, h, w]
    x = x.reshape(b, out_dim, -1, h // 2, w // 2)
    return x.mean(dim=2)


def _dup_up(x: torch.Tensor, out_dim: int, temporal: bool) -> torch.Tensor:
    """Parameter-free shortcut: repeat channels and unfold them into 2x2 pixels.

    With temporal upsampling the video VAE makes two frames and drops the first, so only the
    second half of every repeated group survives. Rank <= 5, as `_avg_down`.
    """
    b, c, h, w = x.shape
    factor_t = 2 if temporal else 1
    x = x.repeat_interleave(out_dim * 4 * factor_t // c, dim=1)
    x = x.reshape(b, out_dim, factor_t * 4, h, w)[:, :, -4:]  # the last frame's [2, 2] pixels
    x = x.reshape(b * out_dim, 2, 2, h, w).permute(0, 3, 1, 4, 2)  # [B*out, h, 2, w, 2]
    return x.reshape(b, out_dim, h * 2, w * 2)


def _avg_down_identity(x: torch.Tensor, out_dim: int) -> torch.Tensor:
    """The last stage's shortcut (factor 1): average groups of channels."""
    b, c, h, w = x.shape
    return x.view(b, out_dim, c // out_dim, h, w).mean(dim=2)


class DownBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, temporal: bool, down: bool):
        super().__init__()
        self.out_dim, self.temporal = out_dim, temporal
        dims = [in_dim] + [out_dim] * num_res_blocks
        self.resnets = nn.ModuleList(ResidualBlock(i, o) for i, o in zip(dims[:-1], dims[1:]))
        self.downsampler = Resample(out_dim, "down", temporal) if down else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for resnet in self.resnets:
            h = resnet(h)
        if self.downsampler is None:
            return h + _avg_down_identity(x, self.out_dim)
        return self.downsampler(h) + _avg_down(x, self.out_dim, self.temporal)


class UpBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, temporal: bool, up: bool):
        super().__init__()
        self.out_dim, self.temporal = out_dim, temporal
        dims = [in_dim] + [out_dim] * (num_res_blocks + 1)
        self.resnets = nn.ModuleList(ResidualBlock(i, o) for i, o in zip(dims[:-1], dims[1:]))
        self.upsampler = Resample(out_dim, "up", temporal) if up else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for resnet in self.resnets:
            h = resnet(h)
        if self.upsampler is None:
            return h
        return self.upsampler(h) + _dup_up(x, self.out_dim, self.temporal)


class Encoder(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        dims = [config.base_dim * m for m in (1, *config.dim_mult)]
        stages = len(config.dim_mult)
        self.conv_in = nn.Conv2d(config.in_channels, dims[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownBlock(
                dims[i],
                dims[i + 1],
                config.num_res_blocks,
                temporal=i < stages - 1 and config.temperal_downsample[i],
                down=i < stages - 1,
            )
            for i in range(stages)
        )
        self.mid_block = MidBlock(dims[-1])
        self.norm_out = _video_norm(dims[-1])
        self.conv_out = nn.Conv2d(dims[-1], config.z_dim * 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.norm_out(self.mid_block(x))))


class Decoder(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        mult = config.dim_mult
        dims = [config.decoder_base_dim * m for m in (mult[-1], *mult[::-1])]
        temporal = config.temperal_downsample[::-1]
        stages = len(mult)
        self.conv_in = nn.Conv2d(config.z_dim, dims[0], 3, padding=1)
        self.mid_block = MidBlock(dims[0])
        self.up_blocks = nn.ModuleList(
            UpBlock(
                dims[i], dims[i + 1], config.num_res_blocks, temporal=i < stages - 1 and temporal[i], up=i < stages - 1
            )
            for i in range(stages)
        )
        self.norm_out = _video_norm(dims[-1])
        self.conv_out = nn.Conv2d(dims[-1], config.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class QwenImage2VAE(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quant_conv = nn.Conv2d(config.z_dim * 2, config.z_dim * 2, 1)
        self.post_quant_conv = nn.Conv2d(config.z_dim, config.z_dim, 1)
        self.decoder = Decoder(config)
        # Statistics from the config, on the CPU even when the weights are built on meta.
        stats = {"latents_mean": config.latents_mean, "latents_std": config.latents_std}
        for name, values in stats.items():
            self.register_buffer(name, torch.tensor(values, device="cpu").view(1, -1, 1, 1), persistent=False)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Normalised posterior mean [B, z, H/16, W/16] of an image [B, 4, H, W] in [-1, 1]."""
        mean = self.quant_conv(self.encoder(image))[:, : self.config.z_dim]
        return (mean - self.latents_mean) / self.latents_std

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Image [B, 4, H, W] in [-1, 1] from normalised latents [B, z, h, w]."""
        z = latents * self.latents_std + self.latents_mean
        return self.decoder(self.post_quant_conv(z)).clamp(-1.0, 1.0)
