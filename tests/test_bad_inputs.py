"""Hostile and mistaken input to `qiedge generate` and `quantize`, through real processes: every
case ends in one error line, exit code 2, refused before any model loads where the input alone
decides, and nothing written; a numerical fault stops the run naming the component."""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
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
        (["--vae-tile", "100"], "--vae-tile 100: a multiple of 64 px from 128 to 2048"),
        (["--vae-tile", "4096"], "--vae-tile 4096: a multiple of 64 px from 128 to 2048"),
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
    long = tmp_path / "long.png"
    Image.new("RGB", (2010, 10)).save(long)
    refused(qiedge(*base, "--image", str(long)), "is 2010x10: the vision tower takes aspect ratios up to 200:1")
    thin = tmp_path / "thin.png"
    Image.new("RGB", (100, 1)).save(thin)
    refused(qiedge(*base, "--image", str(thin), "--resolution", "64"), "a side would be under 32 px")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(small.read_bytes()[:-40])
    refused(qiedge(*base, "--image", str(truncated)), f"condition image {truncated} cannot be read")


@pytest.mark.parametrize("mode", ["1", "CMYK", "LA", "I", "F"])
def test_one_pixel_images_of_every_mode_edit(tiny, tmp_path, mode):
    """Modes the pipeline comparisons (parity_tests/test_vision_parity.py) do not cover, as 1x1
    images: each converted to RGBA as the pipeline converts it, and edited."""
    from qiedge.runtime.runner import open_runtime
    from qiedge.runtime.sampler import Request, generate

    image = Image.new(mode, (1, 1))
    request = Request(["x"], width=32, height=32, images=[image], resolution=32)
    runtime = open_runtime(model=tiny, backend="torch")
    assert generate(request, runtime.facts, runtime.sessions).shape == (1, 32, 32, 4)


@pytest.mark.slow
def test_nan_weight_stops_the_run_naming_the_component(tiny, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny, broken)
    weights = next((broken / "transformer").glob("*.safetensors"))
    tensors = load_file(weights)
    tensors["proj_out.weight"][0, 0] = np.nan  # only the step's output reads it
    save_file(tensors, weights)
    out = tmp_path / "img.png"
    args = ["generate", "a red circle", "--model", str(broken), "--backend", "torch", "--out", str(out)]
    refused(qiedge(*args), "transformer_step produced NaN or Inf in velocity at step 1")
    assert not out.exists()
    assert qiedge(*args, "--no-check-finite").returncode == 0 and out.is_file()


@pytest.mark.slow
def test_quantize_refuses_empty_and_non_utf8_prompt_files(tiny, tmp_path):
    empty, binary = tmp_path / "empty.txt", tmp_path / "binary.txt"
    empty.write_text("\n  \n")
    binary.write_bytes(b"a red \xff circle\n")
    cases = ((empty, "holds no prompts"), (binary, "is not UTF-8 text (invalid start byte at byte 6)"))
    for (path, needle), flag in itertools.product(cases, ("--calib-prompts", "--eval-prompts")):
        result = qiedge(
            "quantize", "--model", str(tiny), "--format", "int8", flag, str(path), "--out", str(tmp_path / "art"),
        )  # fmt: skip
        refused(result, needle)
        assert str(path) in result.stderr and not (tmp_path / "art").exists()


def test_quantize_refuses_an_unknown_component(tiny, tmp_path):
    out = tmp_path / "art"
    result = qiedge("quantize", "--model", str(tiny), "--format", "int8", "--components", "vae", "--out", str(out))
    refused(result, "unknown component(s) vae; choose from condition_encoder")
    assert not out.exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["quantize", "--format", "int4", "--components", "transformer_step"], "which the components leave out"),
        (["export", "--target", "tensorrt"], "--encoder-weights goes with --precision int8, fp8 or int4"),
    ],
)
def test_encoder_weights_refused_where_no_encoder_is_quantized(tiny, tmp_path, args, needle):
    out = tmp_path / "art"
    result = qiedge(*args, "--model", str(tiny), "--encoder-weights", "int4", "--out", str(out))
    refused(result, needle)
    assert not out.exists()


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


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("art") / "art"
    result = qiedge("export", "--preset", "tiny", "--out", str(out), "--components", ONNX_COMPONENTS)
    assert result.returncode == 0, result.stderr
    return out


ONNX_COMPONENTS = "condition_encoder,transformer_prefix,transformer_step,vae_decoder"


def _tampered(artifacts: Path, tmp_path: Path, change) -> Path:
    """A copy of the artifacts with `change(copy, manifest)` applied and the manifest rewritten."""
    copy = tmp_path / "art"
    shutil.copytree(artifacts, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    change(copy, manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def _rehash(copy: Path, manifest: dict, component: str, relative: str) -> None:
    manifest["components"][component]["files"][relative] = hashlib.sha256((copy / relative).read_bytes()).hexdigest()


def _graph_outside(copy, manifest):
    outside = copy.parent / "evil.onnx"
    shutil.copy(copy / "transformer" / "step.onnx", outside)
    manifest["components"]["transformer_step"]["graph"] = "../evil.onnx"


def _file_outside(copy, manifest):
    (copy.parent / "x").write_text("x")
    manifest["components"]["transformer_step"]["files"]["../x"] = hashlib.sha256(b"x").hexdigest()


def _absolute_file(copy, manifest):
    manifest["components"]["vae_decoder"]["files"]["/etc/hostname"] = "0" * 64


def _linked_out(copy, manifest):
    outside = copy.parent / "tokenizer.json"
    shutil.move(copy / "tokenizer" / "tokenizer.json", outside)
    (copy / "tokenizer" / "tokenizer.json").symlink_to(outside)


def _tokenizer_edited(copy, manifest):
    path = copy / "tokenizer" / "tokenizer.json"
    path.write_text(path.read_text().replace('"a"', '"b"', 1))


def _graph_swapped(copy, manifest):
    """The prefix graph where the step's should be, its hash rewritten to match."""
    shutil.copy(copy / "transformer" / "prefix.onnx", copy / "transformer" / "step.onnx")
    _rehash(copy, manifest, "transformer_step", "transformer/step.onnx")


def _not_json(copy, manifest):
    manifest.clear()
    manifest["components"] = "{"


@pytest.mark.parametrize(
    "change, needle",
    [
        (_graph_outside, "its graph '../evil.onnx' is not among its hashed files"),
        (_file_outside, "names '../x', outside the artifacts directory"),
        (_absolute_file, "names '/etc/hostname', outside the artifacts directory"),
        (_linked_out, "names 'tokenizer/tokenizer.json', outside the artifacts directory"),
        (_tokenizer_edited, "tokenizer/tokenizer.json does not match the sha256"),
        (_graph_swapped, "transformer_step: the graph's inputs"),
        (_not_json, "is not a qiedge manifest"),
    ],
)
def test_tampered_manifests_are_refused(artifacts, tmp_path, change, needle):
    copy = _tampered(artifacts, tmp_path, change)
    out = tmp_path / "img.png"
    refused(qiedge("generate", "a red circle", "--artifacts", str(copy), "--out", str(out)), needle)
    assert not out.exists()


def test_an_edit_on_artifacts_without_the_vision_tower_is_refused_before_loading(artifacts, tmp_path):
    condition = tmp_path / "cond.png"
    Image.new("RGB", (64, 64)).save(condition)
    out = tmp_path / "img.png"
    result = qiedge("generate", "x", "--artifacts", str(artifacts), "--image", str(condition), "--out", str(out))
    refused(result, "editing needs vision_encoder and vae_encoder")
    assert "--encoder-backend torch" in result.stderr and not out.exists()


def test_coreml_refuses_the_vision_tower_before_any_work(tmp_path):
    out = tmp_path / "art"
    result = qiedge(
        "export", "--target", "coreml", "--preset", "tiny", "--components", "vision_encoder", "--out", str(out)
    )
    refused(result, "coreml cannot export vision_encoder: Core ML packages are text-to-image only")
    assert not out.exists()


def test_a_manifest_that_is_not_json_is_refused(artifacts, tmp_path):
    copy = tmp_path / "art"
    shutil.copytree(artifacts, copy)
    (copy / "manifest.json").write_bytes(b'{"format_version": 2, \xff')
    refused(qiedge("generate", "a", "--artifacts", str(copy), "--out", str(tmp_path / "x.png")), "is not valid JSON")


class _Fixed:
    def __init__(self, value):
        self.value = value

    def run(self, feeds):
        return {"y": self.value}


def test_parity_counts_nan_and_inf_as_failures():
    """Whatever a bound would make of them (a NaN compares false both ways), NaN / Inf fail."""
    from qiedge.parity.checks import compare_component

    expected = np.ones((2, 3), np.float32)
    for broken, count in ((np.where(np.eye(2, 3) > 0, np.nan, 1.0), 2), (np.full((2, 3), np.inf), 6)):
        for bound in (("rel_l2", 1e-5), ("psnr_db", 35.0)):
            report = compare_component("x", _Fixed(broken), _Fixed(expected), [("case", {})], bound)
            assert not report["passed"] and report["failures"] == [f"case y: {count} NaN / Inf values"]
    clean = compare_component("x", _Fixed(expected), _Fixed(expected), [("case", {})], ("rel_l2", 1e-5))
    assert clean["passed"] and clean["cases"][0]["outputs"]["y"]["non_finite"] == 0
