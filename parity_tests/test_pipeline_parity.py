"""Whole text-to-image and editing runs against diffusers' QwenImage21Pipeline: same seed, same image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from qiedge.runtime.runner import open_runtime
from qiedge.runtime.sampler import Request, generate, to_uint8

from .conftest import FP32_REL_L2, rel_l2


@pytest.fixture(scope="module")
def runtime(tiny_dir):
    return open_runtime(model=tiny_dir, backend="torch")


def _diffusers(pipe, request: Request):
    kwargs = dict(
        width=request.width,
        height=request.height,
        output_type="np",
        generator=torch.Generator().manual_seed(request.seed),
        output_resolution=request.resolution,
    )
    if request.steps is not None:
        kwargs["sigmas"] = list(np.linspace(1.0, 1 / request.steps, request.steps))
    if request.guided:
        kwargs.update(true_cfg_scale=request.cfg, negative_prompt=[request.negative_prompt] * len(request.prompts))
    if request.images:
        kwargs["image"] = request.images
    return pipe(request.prompts, **kwargs).images


def _condition_image(width, height):
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 4), dtype=np.uint8)
    return Image.fromarray(pixels, "RGBA")


REQUESTS = {
    "t2i_square_b1": Request(["a red circle"], width=64, height=64, seed=1),
    "t2i_nonsquare_b2_padded": Request(["a red circle on the left", "hi"], width=96, height=64, seed=2),
    "t2i_cfg_40_step_grid": Request(["a star"], width=64, height=32, seed=3, steps=6, cfg=4.0, negative_prompt=" "),
    "edit_b1": Request(["make it blue"], width=64, height=96, seed=4, images=[_condition_image(80, 50)], resolution=96),
    "edit_b2_padded": Request(
        ["make it blue", "x"], width=64, height=64, seed=5, images=[_condition_image(40, 40)], resolution=64
    ),
}


@pytest.mark.parametrize("name", REQUESTS)
def test_images_match_diffusers(name, runtime, diffusers_pipe):
    """The runtime's NumPy loop over the torch backend, against diffusers' own pipeline."""
    request = REQUESTS[name]
    ours = generate(request, runtime.facts, runtime.sessions)
    theirs = _diffusers(diffusers_pipe, request)
    assert ours.shape == theirs.shape == (len(request.prompts), request.height, request.width, 4)
    assert rel_l2(ours, theirs) <= FP32_REL_L2
    # Same PNG up to a rounding flip where a pixel lands on a .5 boundary.
    assert np.abs(to_uint8(ours).astype(int) - to_uint8(theirs).astype(int)).max() <= 1


def test_condition_encoder_matches_diffusers(model, diffusers_pipe):
    encoder = model.load_condition_encoder()
    prompts = ["a red circle on the left on a blue background", "", "hello"]
    ours = encoder(prompts)
    embeds, mask, slots = diffusers_pipe.encode_prompt(prompts)
    assert rel_l2(ours.embeds, embeds.numpy()) <= FP32_REL_L2
    np.testing.assert_array_equal(ours.mask, mask.bool().numpy())
    np.testing.assert_array_equal(ours.image_slots, slots[0].numpy())
    assert not ours.image_slots.any()


def test_seven_b_parameter_count_matches_diffusers():
    from diffusers import QwenImage21Transformer2DModel
    from qiedge.reference_model import presets
    from qiedge.reference_model.inspect import describe_preset

    preset = presets.get_preset("qwen-image-2-7b")
    with torch.device("meta"):
        reference = QwenImage21Transformer2DModel(**presets.config_dict(preset.transformer))
    expected = sum(p.numel() for p in reference.parameters())
    info = describe_preset(preset, 1024, 1024)
    assert info["components"]["transformer"]["parameters"] == expected
    assert expected > 7_000_000_000
