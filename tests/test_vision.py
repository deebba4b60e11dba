"""The host side of editing (core/vision.py) against transformers: the processor's grids and pixel
values, the vision tower's position taps and rotary angles, the prompt's M-RoPE positions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from qiedge.core.prompt import chat_prompt
from qiedge.core.tokenizer import PromptTokenizer
from qiedge.core.vision import (
    VisionFacts,
    image_index,
    image_tables,
    mrope_positions,
    position_taps,
    preprocess,
    rotary,
    smart_resize,
)
from qiedge.reference_model import presets
from qiedge.reference_model.model_dir import ModelDir, init_model_dir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return ModelDir.open(init_model_dir(presets.TINY, tmp_path_factory.mktemp("vision") / "tiny", seed=0))


@pytest.fixture(scope="module")
def facts(tiny):
    return VisionFacts.from_model_dir(tiny.path, tiny.encoder_config)


@pytest.fixture(scope="module")
def encoder(tiny):
    return tiny.load_condition_encoder()


def _image(width, height, seed=0, mode="RGB"):
    channels = len(mode)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels, mode)


def test_smart_resize_is_transformers():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as theirs

    rng = np.random.default_rng(0)
    for h, w in [(1, 1), (31, 33), (4096, 20), *rng.integers(1, 5000, (300, 2)).tolist()]:
        if max(h, w) / min(h, w) > 200:
            continue
        for low, high in [(1024, 4096**2), (65536, 16777216), (56 * 56, 28 * 28 * 1280)]:
            assert smart_resize(h, w, 32, low, high) == theirs(h, w, 32, low, high), (h, w, low, high)
    with pytest.raises(ValueError, match="aspect ratios up to 200"):
        smart_resize(10, 2500, 32, 1024, 4096**2)


@pytest.mark.parametrize("size", [(96, 64), (64, 160), (32, 32), (2048, 64)])
def test_images_on_the_grid_equal_the_processor(size, facts, encoder):
    """Condition images reach the tower already at multiples of 32 px: the processor the model
    ships (its torchvision backend) leaves them unresized, and so do we."""
    image = _image(*size)
    expected = encoder.processor.image_processor(images=[image], return_tensors="np")
    pixels, grid = preprocess(image, facts)
    assert list(grid) == expected["image_grid_thw"][0].tolist()
    assert np.abs(pixels - expected["pixel_values"]).max() <= 1e-6


@pytest.mark.parametrize("size", [(50, 70), (33, 31), (1999, 65), (20, 20)])
def test_resized_images_equal_the_pillow_processor(size, facts, encoder):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    settings = encoder.processor.image_processor.to_dict()
    keys = ("patch_size", "merge_size", "temporal_patch_size", "size", "image_mean", "image_std")
    pillow = Qwen2VLImageProcessorPil(**{k: settings[k] for k in keys})
    image = _image(*size, seed=1)
    expected = pillow(images=[image], return_tensors="np")
    pixels, grid = preprocess(image, facts)
    assert list(grid) == expected["image_grid_thw"][0].tolist()
    assert np.abs(pixels - expected["pixel_values"]).max() <= 1e-6


@pytest.mark.parametrize("grid", [(1, 4, 6), (1, 10, 4), (1, 2, 2), (1, 64, 2)])
def test_position_taps_and_rotary_equal_the_tower(grid, facts, encoder):
    from transformers.vision_utils import get_vision_interpolation_indices_and_weights, get_vision_position_ids

    visual = encoder.model.model.visual
    thw = torch.tensor([grid])
    indices, weights = get_vision_interpolation_indices_and_weights(
        thw, visual.num_grid_per_side, "bilinear", True, visual.spatial_merge_size
    )
    ours = position_taps(grid, facts)
    np.testing.assert_array_equal(ours[0], indices.numpy())
    assert np.abs(ours[1] - weights.numpy()).max() <= 1e-7
    cos, sin = visual.rotary_pos_emb(torch.zeros(1), get_vision_position_ids(thw, visual.spatial_merge_size))
    ours_cos, ours_sin = rotary(grid, facts)
    assert np.abs(ours_cos - cos.numpy()).max() <= 1e-6
    assert np.abs(ours_sin - sin.numpy()).max() <= 1e-6


def test_prompt_ids_and_mrope_positions_equal_transformers(tiny, facts, encoder):
    """Two images of different shapes, a batch of two prompts of different lengths (left-padded)."""
    images = [_image(96, 64, 2), _image(64, 128, 3)]
    prompts = ["make the left one blue", "x"]
    expected = encoder.processor(
        text=[chat_prompt(p, len(images)) for p in prompts],
        images=images * len(prompts),
        padding=True,
        padding_side="left",
        return_tensors="pt",
    )
    positions, _ = encoder.model.model.get_rope_index(
        expected["input_ids"],
        expected["mm_token_type_ids"],
        expected["image_grid_thw"],
        attention_mask=expected["attention_mask"],
    )
    tokenizer = PromptTokenizer(tiny.path / "processor" / "tokenizer.json")
    grids = [preprocess(i, facts)[1] for i in images]
    tokens = tokenizer(prompts, [h * w // facts.merge_size**2 for _, h, w in grids])
    np.testing.assert_array_equal(tokens.input_ids, expected["input_ids"].numpy())
    np.testing.assert_array_equal(tokens.attention_mask, expected["attention_mask"].numpy())
    ours = mrope_positions(tokens.input_ids, tokens.attention_mask, tokenizer.image_pad_id, grids, facts.merge_size)
    np.testing.assert_array_equal(ours, positions.numpy())
    with pytest.raises(ValueError, match="image 1 has 6 tokens but 7 slots"):
        mrope_positions(
            tokenizer(["x"], [7]).input_ids, tokenizer(["x"], [7]).attention_mask, tokenizer.image_pad_id, grids, 2
        )


def test_image_tables_put_each_token_on_its_row():
    pad = 9
    ids = np.array([[0, 0, 9, 9, 5, 9], [0, 9, 9, 5, 9, 1]])
    np.testing.assert_array_equal(image_index(ids, pad), [[0, 0, 1, 2, 0, 3], [0, 1, 2, 0, 3, 0]])
    first = (np.full((2, 4), 1.0, np.float32), np.full((3, 2, 4), 2.0, np.float32))
    second = (np.full((1, 4), 3.0, np.float32), np.full((3, 1, 4), 4.0, np.float32))
    embeds, deepstack = image_tables([first, second], hidden=4, deepstack=3)
    assert embeds.shape == (4, 4) and deepstack.shape == (3, 4, 4)
    np.testing.assert_array_equal(embeds[:, 0], [0, 1, 1, 3])
    np.testing.assert_array_equal(deepstack[:, :, 0], [[0, 2, 2, 4]] * 3)


def test_facts_read_the_released_processor_layout(tmp_path, tiny):
    """A released model directory keeps its image settings in preprocessor_config.json."""
    import json
    import shutil

    folder = tmp_path / "processor"
    folder.mkdir()
    settings = json.loads((tiny.path / "processor" / "processor_config.json").read_text())["image_processor"]
    settings["size"] = {"shortest_edge": 65536, "longest_edge": 16777216}
    (folder / "preprocessor_config.json").write_text(json.dumps(settings))
    shutil.copy(tiny.path / "processor" / "tokenizer.json", folder)
    facts = VisionFacts.from_model_dir(tmp_path, tiny.encoder_config)
    assert (facts.min_pixels, facts.max_pixels) == (65536, 16777216)
    assert VisionFacts.from_dict(facts.to_dict(), "test") == facts
    settings["resample"] = 2
    with pytest.raises(ValueError, match="not bicubic"):
        VisionFacts.from_configs(settings, tiny.encoder_config)
