"""The tiled VAE decoder (runtime/tiled_vae.py) on the exported graph against diffusers' own tiled
decode (`AutoencoderKLQwenImage21.enable_tiling`) with the same tiles."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from qiedge.core.artifacts import Artifacts
from qiedge.core.metrics import Comparison, psnr
from qiedge.core.tiles import Tiling
from qiedge.runtime.backends.onnx_runtime import OnnxRuntimeBackend
from qiedge.runtime.tiled_vae import TiledDecoder

pytestmark = pytest.mark.slow
TILE, STRIDE = 8, 6  # latent tokens: 128 px tiles every 96 px, as diffusers' 256 / 192 at half the size


@pytest.fixture(scope="module")
def decoder(onnx_fp32):
    return OnnxRuntimeBackend(Artifacts.open(onnx_fp32)).load("vae_decoder")


def _diffusers_tiled(pipe, latents: np.ndarray, clamp_tiles: bool) -> np.ndarray:
    vae = copy.deepcopy(pipe.vae)
    if clamp_tiles:  # as the exported decoder does, before the blend
        decode = vae.decoder.forward
        vae.decoder.forward = lambda *args, **kwargs: decode(*args, **kwargs).clamp(-1.0, 1.0)
    px = 16
    vae.enable_tiling(
        tile_sample_min_height=TILE * px,
        tile_sample_min_width=TILE * px,
        tile_sample_stride_height=STRIDE * px,
        tile_sample_stride_width=STRIDE * px,
    )
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1)
    z = torch.from_numpy(latents) * std + mean
    return vae.decode(z[:, :, None]).sample[:, :, 0].numpy()


@pytest.mark.parametrize("grid", [(20, 14), (7, 13)])
def test_tiles_blend_as_diffusers_blends_them(grid, decoder, diffusers_pipe):
    latents = np.random.default_rng(3).standard_normal((1, 64, *grid), dtype=np.float32)
    tiled = TiledDecoder(decoder, Tiling(TILE, STRIDE)).run({"latents": latents})["image"]
    expected = _diffusers_tiled(diffusers_pipe, latents, clamp_tiles=True)
    assert tiled.shape == expected.shape == (1, 4, 16 * grid[0], 16 * grid[1])
    assert Comparison.of(tiled, expected).rel_l2 <= 1e-5
    # diffusers clamps after the blend: the random-weight VAE saturates ~6% of its pixels, and
    # where one tile did in an overlap the two differ (measured 39.4-40.0 dB).
    assert psnr(tiled, _diffusers_tiled(diffusers_pipe, latents, clamp_tiles=False), peak=2.0) >= 35


def test_latents_within_one_tile_decode_whole(decoder):
    latents = np.random.default_rng(4).standard_normal((2, 64, TILE, 5), dtype=np.float32)
    tiled = TiledDecoder(decoder, Tiling(TILE, STRIDE)).run({"latents": latents})["image"]
    np.testing.assert_array_equal(tiled, decoder.run({"latents": latents})["image"])


def test_a_stride_outside_the_tile_is_refused():
    for stride in (0, TILE + 1):
        with pytest.raises(ValueError, match="stride"):
            Tiling(TILE, stride)


def test_generate_decodes_in_tiles(onnx_fp32):
    from qiedge.runtime.runner import open_runtime
    from qiedge.runtime.sampler import Request, generate

    runtime = open_runtime(artifacts=onnx_fp32, vae_tiling=Tiling(TILE, STRIDE))
    assert isinstance(runtime.sessions["vae_decoder"], TiledDecoder)
    image = generate(Request(["a red circle"], width=256, height=160), runtime.facts, runtime.sessions)
    assert image.shape[:3] == (1, 160, 256) and np.isfinite(image).all()
