import itertools

import numpy as np
import pytest
from qiedge.core.metrics import psnr, ssim
from qiedge.core.scenes import (
    COLORS,
    POSITIONS,
    SHAPES,
    Scene,
    Shape,
    held_out,
    parse_prompt,
    render,
    sample_scene,
)
from qiedge.runtime.adherence import adherence, check
from qiedge.runtime.evaluate import prompt_set


def test_prompts_round_trip_and_splits_are_disjoint():
    rng = np.random.default_rng(0)
    for split in ("train", "held-out"):
        for _ in range(200):
            scene = sample_scene(rng, split)
            assert parse_prompt(scene.prompt()) == scene
            assert all(held_out(s) == (split == "held-out") for s in scene.shapes)
    combos = [Shape(k, c, p) for k, c, p in itertools.product(SHAPES, COLORS, POSITIONS)]
    assert 0.05 < np.mean([held_out(s) for s in combos]) < 0.2


@pytest.mark.parametrize(
    "prompt",
    [
        "a dog on a cat background",
        "a red circle on the moon on a blue background",
        "a mauve circle on the left on a blue background",
    ],
)
def test_parse_rejects_prompts_outside_the_grammar(prompt):
    with pytest.raises(ValueError):
        parse_prompt(prompt)


def test_rendered_truth_scores_full_marks_and_noise_scores_none():
    prompts = prompt_set("held-out", 20) + prompt_set("train", 40)
    for size in (128, 256):
        truth = np.stack([np.asarray(render(parse_prompt(p), size)) for p in prompts])
        assert adherence(truth, prompts)["overall"] == 1.0
    noise = np.random.default_rng(0).integers(0, 256, truth.shape, dtype=np.uint8)
    assert adherence(noise, prompts)["overall"] < 0.1


def test_each_attribute_is_actually_checked():
    scene = Scene("blue", (Shape("circle", "red", "left"),))
    image = np.asarray(render(scene, 128))
    assert all(check(image, scene).values())
    assert check(image, Scene("green", scene.shapes)) == {
        "background": False,
        "shape0_color": True,
        "shape0_position": True,
    }
    moved = Scene("blue", (Shape("circle", "red", "right"),))
    assert not check(image, moved)["shape0_position"]
    recolored = Scene("blue", (Shape("circle", "yellow", "left"),))
    assert not check(image, recolored)["shape0_color"]
    word = Scene("black", word=("HELLO", "white"))
    assert check(np.asarray(render(word, 128)), word)["word"]
    assert not check(np.asarray(render(Scene("black"), 128)), word)["word"]


def test_psnr_and_ssim():
    a = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 4), dtype=np.uint8)
    assert psnr(a, a) == float("inf") and ssim(a, a) == pytest.approx(1.0)
    b = np.clip(a.astype(int) + 3, 0, 255).astype(np.uint8)
    assert 35 < psnr(a, b) < 40 and 0.9 < ssim(a, b) < 1.0
