"""Hostile and mistaken input to `qiedge generate` and `quantize`, through real processes: every
case ends in one error line, exit code 2, refused before any model loads where the input alone
decides, and nothing written; a numerical fault stops the run naming the component."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from qiedge.reference_model import presets
from qiedge.reference_model.model_dir import init_model_dir
from qiedge.runtime.images import save_png
from safetensors.numpy import load_file, save_file


def qiedge(*args):
    return subprocess.run([sys.executable, "-m", "qiedge.cli", *args], capture_output=True, text=True, timeout=300)


def refused(result, needle: str) -> None:
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()  # the backend's announcement may come first
    assert "error:" in lines[-1] and sum("error:" in line for line in lines) == 1, result.stderr


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return init_model_dir(presets.TINY, tmp_path_factory.mktemp("bad") / "tiny", seed=0)


@pytest.fixture(scope="module")
def huge_image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    Image.new("1", (8200, 8200)).save(path)  # 67 megapixels, a few kB on disk
    return path


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--seed", str(2**32)], "seed 4294967296 is outside 0-4294967295"),
        (["--seed", "-1"], "seed -1 is outside 0-4294967295"),
        (["--cfg", "inf", "--negative-prompt", " "], "cfg must be a finite number >= 0, got inf"),
        (["--cfg", "nan", "--negative-prompt", " "], "cfg must be a finite number >= 0, got nan"),
        (["--steps", "0"], "steps must be 1-1000, got 0"),
        (["--steps", "10000"], "steps must be 1-1000, got 10000"),
        (["--batch", "1000"], "batch 1000 is over 64 images per run"),
        (["--width", "100"], "width 100 must be a multiple of 32"),
        (["--out", "missing/dir/x.png"], "does not exist"),
        (["--out", "x.jpg"], "output must be a .png file"),
    ],
)
def test_generate_refuses_before_loading(tmp_path, args, needle):
    """With a model directory that does not exist: the refusal must come before anything loads."""
    args = [a.replace("missing", str(tmp_path / "missing")) for a in args]
    out = ["--out", str(tmp_path / "x.png")] if "--out" not in args else []
    refused(qiedge("generate", "a red circle", "--model", str(tmp_path / "no-model"), *out, *args), needle)
    assert list(tmp_path.iterdir()) == []


def test_generate_refuses_an_output_that_is_a_directory(tmp_path):
    (tmp_path / "img.png").mkdir()
    refused(qiedge("generate", "a", "--model", "nope", "--out", str(tmp_path / "img.png")), "is a directory")


def test_condition_images_refused_before_decoding(tmp_path, huge_image):
    base = ["generate", "a", "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "x.png")]
    refused(qiedge(*base, "--image", str(huge_image)), "is 8200x8200, over 67 megapixels")
    small = tmp_path / "small.png"
    Image.new("RGB", (64, 64)).save(small)
    refused(qiedge(*base, "--image", str(small), "--resolution", "100000"), "resolution 100000 must be 32-2048")
    text = tmp_path / "not-an-image.png"
    text.write_text("hello")
    refused(qiedge(*base, "--image", str(text)), "cannot identify image file")


def test_nan_weight_stops_the_run_naming_the_component(tiny, tmp_path):
    broken = tmp_path / "broken"
    subprocess.run(["cp", "-r", str(tiny), str(broken)], check=True)
    weights = next((broken / "transformer").glob("*.safetensors"))
    tensors = load_file(weights)
    tensors["proj_out.weight"][0, 0] = np.nan  # only the step's output reads it
    save_file(tensors, weights)
    out = tmp_path / "img.png"
    args = ["generate", "a red circle", "--model", str(broken), "--backend", "torch", "--out", str(out)]
    refused(qiedge(*args), "transformer_step produced NaN or Inf in velocity at step 1")
    assert not out.exists()
    assert qiedge(*args, "--no-check-finite").returncode == 0 and out.is_file()


def test_quantize_refuses_empty_and_non_utf8_prompt_files(tiny, tmp_path):
    empty, binary = tmp_path / "empty.txt", tmp_path / "binary.txt"
    empty.write_text("\n  \n")
    binary.write_bytes(b"a red \xff circle\n")
    for path, needle in ((empty, "holds no prompts"), (binary, "is not UTF-8 text (invalid start byte at byte 6)")):
        result = qiedge(
            "quantize", "--model", str(tiny), "--format", "int8", "--calib-prompts", str(path),
            "--out", str(tmp_path / "art"),
        )  # fmt: skip
        refused(result, needle)
        assert str(path) in result.stderr and not (tmp_path / "art").exists()


def test_concurrent_writers_of_one_path_each_publish_a_whole_image(tmp_path):
    out = tmp_path / "img.png"
    images = [np.full((1, 32, 32, 4), value, np.uint8) for value in range(8)]
    threads = [threading.Thread(target=save_png, args=(image, out, {"n": i})) for i, image in enumerate(images)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with Image.open(out) as image:
        pixels, n = np.asarray(image), int(image.text["qiedge:n"])
    assert (pixels == n).all()  # one writer's image, whole, with its own metadata
    assert [p.name for p in tmp_path.iterdir()] == ["img.png"]  # no temp file left
