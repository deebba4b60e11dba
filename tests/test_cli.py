"""The CLI as a user drives it: exit codes, one-line errors, files and metadata."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image
from qiedge.reference_model import presets
from qiedge.reference_model.model_dir import init_model_dir


def qiedge(*args, env=None):
    return subprocess.run([sys.executable, "-m", "qiedge.cli", *args], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return init_model_dir(presets.TINY, tmp_path_factory.mktemp("cli") / "tiny", seed=0)


@pytest.mark.slow
def test_generate_writes_png_with_metadata(tiny, tmp_path):
    out = tmp_path / "img.png"
    result = qiedge(
        "generate",
        "a red circle",
        "--model",
        str(tiny),
        "--width",
        "64",
        "--height",
        "96",
        "--seed",
        "5",
        "--out",
        str(out),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    image = Image.open(out)
    assert image.size == (64, 96) and image.mode == "RGBA"
    assert image.text["qiedge:prompt"] == "a red circle"
    assert image.text["qiedge:seed"] == "5"
    assert image.text["qiedge:steps"] == "4"
    assert image.text["qiedge:model_hash"] == report["model_hash"] and len(report["model_hash"]) == 64
    assert report["backend"] == "torch" and "GFLOP job" in report["backend_reason"]  # auto: too small to compile


@pytest.mark.slow
def test_generate_says_which_backend_runs_and_why(tiny, tmp_path):
    result = qiedge(
        "generate",
        "a red circle",
        "--model",
        str(tiny),
        "--width",
        "32",
        "--height",
        "32",
        "--out",
        str(tmp_path / "a.png"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[0].startswith("backend torch: a 0 GFLOP job")


@pytest.mark.slow
def test_generate_is_deterministic_and_edits(tiny, tmp_path):
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for p in paths:
        assert (
            qiedge("generate", "x", "--model", str(tiny), "--width", "32", "--height", "32", "--out", str(p)).returncode
            == 0
        )
    assert Image.open(paths[0]).tobytes() == Image.open(paths[1]).tobytes()
    edited = tmp_path / "edit.png"
    result = qiedge(
        "generate",
        "make it blue",
        "--model",
        str(tiny),
        "--image",
        str(paths[0]),
        "--resolution",
        "64",
        "--width",
        "64",
        "--height",
        "64",
        "--out",
        str(edited),
    )
    assert result.returncode == 0, result.stderr
    assert Image.open(edited).size == (64, 64)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--width", "100"], "width 100 must be a multiple of 32"),
        (["--height", "4096"], "height 4096 must be a multiple of 32 between 32 and 2048"),
        (["--steps", "0"], "steps must be 1-1000, got 0"),
        (["--precision", "fp8"], "the torch backend takes no --precision; cuda does"),
        (["--backend", "cuda"], "the cuda backend needs an NVIDIA GPU"),
    ],
)
def test_bad_generate_options_fail_in_one_line(tiny, args, needle):
    if ("cuda" in args or "--precision" in args) and torch.cuda.is_available():
        pytest.skip("a GPU is visible: the cuda backend would run")
    result = qiedge("generate", "x", "--model", str(tiny), *args)
    assert result.returncode == 2
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_prompt_past_the_limit(tiny):
    result = qiedge("generate", "a" * 1100, "--model", str(tiny), "--width", "32", "--height", "32")
    assert result.returncode == 2 and "1100 tokens long; the limit is 1024" in result.stderr


@pytest.mark.slow
def test_missing_component_and_bad_weights(tiny, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny, broken)
    shutil.rmtree(broken / "vae")
    result = qiedge("generate", "x", "--model", str(broken))
    assert result.returncode == 2 and "missing component folder(s): vae" in result.stderr

    mismatched = tmp_path / "mismatched"
    shutil.copytree(tiny, mismatched)
    config = json.loads((mismatched / "transformer" / "config.json").read_text())
    config["num_layers"] = 3
    (mismatched / "transformer" / "config.json").write_text(json.dumps(config))
    result = qiedge("generate", "x", "--model", str(mismatched), "--width", "32", "--height", "32")
    assert result.returncode == 2 and "missing 9: transformer_blocks.2." in result.stderr
    assert "Traceback" not in result.stderr
    assert "Traceback" in qiedge("--debug", "generate", "x", "--model", str(mismatched)).stderr


def test_init_refuses_to_overwrite(tiny):
    result = qiedge("init", "--preset", "tiny", "--out", str(tiny))
    assert result.returncode == 2 and "already exists" in result.stderr


def test_inspect_json(tiny):
    result = qiedge("inspect", "--model", str(tiny), "--width", "512", "--height", "256", "--json")
    info = json.loads(result.stdout)
    assert info["resolution"]["image_tokens"] == 32 * 16
    assert info["components"]["transformer"]["stored_dtype"] == "f32"
    params = info["components"]["transformer"]["parameters"]
    assert info["components"]["transformer"]["memory_bytes"]["fp16"] == 2 * params


@pytest.mark.slow
def test_export_preset_with_stand_in_weights(tmp_path):
    out = tmp_path / "art"
    result = qiedge("export", "--preset", "tiny", "--components", "vae_decoder", "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    manifest = json.loads(result.stdout)
    assert manifest["source"]["model_hash"] == "random-weights:tiny:seed0"
    assert list(manifest["components"]) == ["vae_decoder"]
    assert manifest["components"]["vae_decoder"]["parity"] is None  # nothing to compare stand-ins against

    import numpy as np
    from qiedge.core.artifacts import Artifacts
    from qiedge.runtime.backends.onnx_runtime import OnnxRuntimeBackend

    session = OnnxRuntimeBackend(Artifacts.open(out)).load("vae_decoder")
    image = session.run({"latents": np.zeros((1, 64, 2, 4), np.float32)})["image"]
    assert image.shape == (1, 4, 32, 64) and np.abs(image).max() <= 1


def test_export_refuses_bad_requests(tiny, tmp_path):
    assert "exactly one of --model DIR or --preset P" in qiedge("export", "--out", str(tmp_path / "a")).stderr
    result = qiedge("export", "--model", str(tiny), "--components", "nope", "--out", str(tmp_path / "c"))
    assert result.returncode == 2 and "unknown component(s) nope" in result.stderr
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--sizes", "64x64"], "the onnx target takes no --sizes"),
        (["--optimize", "cpu", "--target", "tensorrt"], "the tensorrt target takes no --optimize"),
        (["--target", "coreml", "--sizes", "64x65"], "sides must be multiples of 32"),
        (["--target", "coreml", "--prompt-lengths", "a,b"], "must be comma-separated token counts"),
        (["--target", "coreml", "--deployment-target", "iOS17", "--sizes", "64x64,96x64"], "no multifunction"),
        (
            ["--target", "coreml", "--deployment-target", "iOS17", "--prompt-lengths", "128", "--compress", "int4"],
            "deploy to iOS18 or macOS15",
        ),
        (["--target", "coreml", "--max-chunk-mb", "0"], "--max-chunk-mb must be positive"),
        (["--vae-tile", "512"], "the onnx target takes no --vae-tile"),
        (["--target", "coreml", "--device", "orin"], "the coreml target takes no --device"),
        (["--target", "tensorrt", "--device", "orin", "--precision", "fp8"], "Jetson Orin (Ampere) cannot run fp8"),
        (["--target", "tensorrt", "--recipe", "fp8-attention"], "--recipe goes with --precision int8, fp8 or int4"),
        (["--target", "tensorrt", "--trt", "9.0"], "no TensorRT 9.0 operator table; known: 10.6, 10.8, 10.15, 11.0"),
        (
            ["--target", "coreml", "--sensitivity", "r.json"],
            "--sensitivity chooses the 8-bit layers of --compress mixed",
        ),
        (["--target", "coreml", "--compress", "mixed", "--sensitivity", "nope.json"], "is not a `qiedge quantize"),
    ],
)
def test_export_refuses_bad_target_options_before_loading(tmp_path, args, needle):
    result = qiedge("export", "--preset", "tiny", "--out", str(tmp_path / "art"), *args)
    assert result.returncode == 2 and needle in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "art").exists()


@pytest.mark.slow
def test_export_coreml_preset_and_generate_from_it(tmp_path):
    """The CLI end to end on Core ML: stand-in weights, then an image drawn by executing the
    saved programs (NumPy here, Core ML on macOS), its VAE decoder exported for 128 px tiles."""
    art, out = tmp_path / "art", tmp_path / "img.png"
    result = qiedge(
        "export", "--preset", "tiny", "--target", "coreml", "--sizes", "160x32", "--prompt-lengths", "32",
        "--vae-tile", "128", "--out", str(art), "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    manifest = json.loads(result.stdout)
    assert manifest["target"] == "coreml" and manifest["precision"] == "fp16" and manifest["vae_tile"] == 128
    step = manifest["components"]["transformer_step"]["functions"]
    assert list(step) == ["step_160x32_t32"] and step["step_160x32_t32"]["target"] == 20
    assert list(manifest["components"]["condition_encoder"]["functions"]) == ["model_t32"]
    # 10 latents wide: a tile of 8 and the edge's 4 (tiles start every 6), no whole-image function.
    assert list(manifest["components"]["vae_decoder"]["functions"]) == ["model_64x32", "model_128x32"]
    result = qiedge("generate", "a red circle", "--artifacts", str(art), "--width", "160", "--height", "32",
                    "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("backend coreml: coreml artifacts")
    assert Image.open(out).size == (160, 32)
    # Other tiles are sizes no function holds: refused before anything loads, not after the steps.
    tiled = qiedge("generate", "a", "--artifacts", str(art), "--width", "160", "--height", "32", "--vae-tile", "256",
                   "--out", str(tmp_path / "tiled.png"))  # fmt: skip
    assert tiled.returncode == 2 and f"--vae-tile 256: {art} was exported for 128 px tiles" in tiled.stderr


def test_most_sensitive_layers_from_a_quantization_report(tmp_path):
    from qiedge.quantization.report import most_sensitive

    ranking = {f"transformer_blocks.{i}.attn.to_q": 1.0 / (i + 1) for i in range(25)}
    (tmp_path / "report.json").write_text(json.dumps({"sensitivity": ranking}))
    assert most_sensitive(tmp_path / "report.json") == (
        "transformer_blocks.0.attn.to_q",
        "transformer_blocks.1.attn.to_q",
    )
