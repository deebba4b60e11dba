"""The VAE encoder and decoder against diffusers' AutoencoderKLQwenImage21."""

from __future__ import annotations

import pytest
import torch

from .conftest import FP32_REL_L2, rel_l2


@pytest.fixture(scope="module")
def vae(model):
    return model.load_vae()


@pytest.mark.parametrize("size", [(64, 64), (64, 128), (96, 32)])
def test_encoder_matches_diffusers(size, vae, diffusers_pipe):
    image = torch.rand(2, 4, *size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    ref = diffusers_pipe.vae
    expected = ref.encode(image[:, :, None]).latent_dist.mode()[:, :, 0]
    mean = torch.tensor(ref.config.latents_mean).view(1, -1, 1, 1)
    std = torch.tensor(ref.config.latents_std).view(1, -1, 1, 1)
    assert rel_l2(vae.encode(image), (expected - mean) / std) <= FP32_REL_L2


@pytest.mark.parametrize("grid", [(4, 4), (2, 6), (6, 2)])
def test_decoder_matches_diffusers(grid, vae, diffusers_pipe):
    latents = torch.randn(2, 64, *grid, generator=torch.Generator().manual_seed(2))
    ref = diffusers_pipe.vae
    mean = torch.tensor(ref.config.latents_mean).view(1, -1, 1, 1)
    std = torch.tensor(ref.config.latents_std).view(1, -1, 1, 1)
    expected = ref.decode((latents * std + mean)[:, :, None]).sample[:, :, 0]
    assert rel_l2(vae.decode(latents), expected) <= FP32_REL_L2
