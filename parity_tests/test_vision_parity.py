"""Editing on exported graphs: the vision tower's graph wrapper against transformers' own tower, the
exported condition encoder with images against diffusers' `encode_prompt`, and whole edits on
ONNX Runtime against `QwenImage21Pipeline` with the same seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from qiedge.core.metrics import psnr
from qiedge.core.vision import vision_input
from qiedge.runtime.runner import open_runtime
from qiedge.runtime.sampler import Request, generate, resize_condition

from .conftest import FP32_REL_L2, rel_l2
from .test_pipeline_parity import _diffusers

pytestmark = pytest.mark.slow


def _image(width, height, seed, mode="RGBA"):
    """Random pixels in `mode`; "P" is an adaptive palette, "I;16" 16-bit grayscale as PNGs load."""
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 2**16, (height, width), dtype=np.uint16))
    if mode == "P":
        return _image(width, height, seed, "RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pixels = rng.integers(0, 256, (height, width, len(mode)), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode)


@pytest.fixture(scope="module")
def exported(onnx_fp32):
    return open_runtime(artifacts=onnx_fp32)


@pytest.mark.parametrize("size", [(96, 64), (64, 160), (32, 32)])
def test_vision_graph_wrapper_is_transformers_tower(size, model, onnx_fp32):
    """The graph's tower (one image, host-computed taps and angles) against Qwen3VLVisionModel."""
    from qiedge.core.artifacts import Artifacts
    from qiedge.runtime.backends.pytorch import TorchBackend

    encoder = model.load_condition_encoder()
    image = _image(*size, seed=1, mode="RGB")
    inputs = encoder.processor.image_processor(images=[image], return_tensors="pt")
    theirs = encoder.model.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
    feeds = vision_input(image, Artifacts.open(onnx_fp32).facts.vision).feeds
    ours = TorchBackend(model).load("vision_encoder").run(feeds)
    assert rel_l2(ours["image_embeds"], theirs.pooler_output.numpy()) <= FP32_REL_L2
    expected = torch.stack(theirs.deepstack_features).numpy()
    assert rel_l2(ours["deepstack_embeds"], expected) <= FP32_REL_L2


@pytest.mark.parametrize("count", [1, 2])
def test_exported_encoder_with_images_matches_diffusers(count, exported, diffusers_pipe):
    """Vision graph + language-model graph + NumPy preprocessing against the pipeline's encoder."""
    images = [resize_condition(img, 64) for img in (_image(80, 50, 2), _image(40, 72, 3))[:count]]
    prompts = ["make the background blue", "x"]
    ours = exported.sessions.encode(prompts, images)
    embeds, mask, slots = diffusers_pipe.encode_prompt(prompts, images)
    assert ours.embeds.shape == tuple(embeds.shape)
    assert rel_l2(ours.embeds, embeds.numpy()) <= FP32_REL_L2
    np.testing.assert_array_equal(ours.mask, mask.bool().numpy())
    np.testing.assert_array_equal(ours.image_slots, slots[0].numpy())
    assert ours.image_slots.sum() == sum(i.width * i.height // 32**2 for i in images)


EDITS = {
    "one_image_nonsquare": Request(
        ["make it blue"], width=64, height=96, seed=4, images=[_image(80, 50, 5)], resolution=96
    ),
    "two_images_b2_padded": Request(
        ["put the first on the second", "x"],
        width=96,
        height=64,
        seed=5,
        images=[_image(80, 50, 6), _image(40, 72, 7)],
        resolution=64,
    ),
    "grayscale_cfg": Request(
        ["make it red"], width=64, height=64, seed=6, images=[_image(48, 48, 8, "L")], cfg=3.0, negative_prompt=" "
    ),
    # Both convert to RGBA before anything else, as the pipeline does (16-bit values clip at 255).
    "palette_and_16_bit": Request(
        ["x"], width=64, height=64, seed=7, images=[_image(40, 40, 9, "P"), _image(32, 48, 10, "I;16")], resolution=64
    ),
}


@pytest.mark.parametrize("name", EDITS)
def test_edits_on_onnxruntime_match_diffusers(name, exported, diffusers_pipe):
    request = EDITS[name]
    ours = generate(request, exported.facts, exported.sessions)
    theirs = _diffusers(diffusers_pipe, request)
    assert ours.shape == theirs.shape
    assert psnr(ours, theirs, peak=1.0) >= 40
