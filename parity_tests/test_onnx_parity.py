"""Exported ONNX graphs in ONNX Runtime against the PyTorch reference."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
from qiedge.core.artifacts import ArtifactError, Artifacts
from qiedge.core.metrics import Comparison
from qiedge.export.cases import PREFIX
from qiedge.export.specs import SPECS
from qiedge.parity.checks import case_context, run_parity
from qiedge.reference_model.model_dir import ModelDir
from qiedge.runtime.backends.onnx_runtime import OnnxRuntimeBackend

pytestmark = pytest.mark.slow


def test_fp32_every_component_and_whole_images(onnx_fp32, tiny_dir):
    report = run_parity(onnx_fp32, tiny_dir)
    assert report["passed"], report["failures"]
    assert set(report["components"]) == {
        "condition_encoder",
        "vision_encoder",
        "transformer_prefix",
        "transformer_step",
        "transformer",
        "vae_encoder",
        "vae_decoder",
    }
    for result in report["components"].values():
        assert result["worst_rel_l2"] <= 1e-5
    for case in report["end_to_end"]["cases"]:
        assert case["psnr_db"] >= 50


def test_fp16_images_within_35_db(tiny_dir, tmp_path):
    from qiedge.export.run import export_artifacts

    export_artifacts(tmp_path / "fp16", precision="fp16", model=ModelDir.open(tiny_dir))
    report = run_parity(tmp_path / "fp16", tiny_dir)
    assert report["passed"], report["failures"]
    assert min(c["psnr_db"] for c in report["end_to_end"]["cases"]) >= 35
    assert report["components"]["vision_encoder"]["worst_psnr_db"] >= 35
    # ONNX Runtime's CPU provider has no fp16 MultiHeadAttention: the cpu level leaves it as exported.
    assert Artifacts.open(tmp_path / "fp16").component("transformer_step")["optimization"]["fused"]["attention"] == 0


def test_prefix_and_step_graphs_equal_the_one_shot_graph(onnx_fp32, tiny_dir):
    backend = OnnxRuntimeBackend(Artifacts.open(onnx_fp32))
    prefix, step, one_shot = (backend.load(n) for n in ("transformer_prefix", "transformer_step", "transformer"))
    context = case_context(Artifacts.open(onnx_fp32), ModelDir.open(tiny_dir))
    for (_, whole), (_, feeds) in zip(SPECS["transformer"].cases(context), SPECS["transformer_step"].cases(context)):
        cache = prefix.run(feeds.pop(PREFIX))
        cached = step.run({**feeds, **cache})["velocity"]
        assert Comparison.of(cached, one_shot.run(whole)["velocity"]).rel_l2 <= 1e-5


def test_graphs_declare_symbolic_dims(onnx_fp32):
    import onnx

    graph = onnx.load(str(onnx_fp32 / "transformer" / "step.onnx"), load_external_data=False).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert dims["latents"] == ["batch", "target", 64]
    assert dims["past_keys"] == [2, "batch", 2, "prefix", 32]
    manifest = Artifacts.open(onnx_fp32).manifest
    assert manifest["components"]["vae_decoder"]["outputs"][0]["shape"] == [
        "batch",
        4,
        "16*latent_height",
        "16*latent_width",
    ]
    assert manifest["components"]["transformer"]["opset"] == 18


def test_tampered_or_missing_files_are_refused(onnx_fp32, tmp_path):
    copy = tmp_path / "art"
    shutil.copytree(onnx_fp32, copy)
    with open(copy / "vae_decoder" / "weights.bin", "r+b") as f:
        f.seek(128)
        byte = f.read(1)
        f.seek(128)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ArtifactError, match="vae_decoder/weights.bin does not match the sha256"):
        OnnxRuntimeBackend(Artifacts.open(copy)).load("vae_decoder")
    (copy / "transformer" / "step.onnx").unlink()
    with pytest.raises(ArtifactError, match="transformer/step.onnx is missing"):
        Artifacts.open(copy).verify("transformer_step")


def test_generate_from_artifacts_never_imports_torch(onnx_fp32, tmp_path):
    """Text-to-image and an edit with a non-square RGBA condition image, both on the exported graphs."""
    from PIL import Image

    condition = tmp_path / "cond.png"
    pixels = np.random.default_rng(0).integers(0, 256, (40, 72, 4), dtype=np.uint8)
    Image.fromarray(pixels, "RGBA").save(condition)
    t2i, edit = tmp_path / "t2i.png", tmp_path / "edit.png"
    common = f"'--artifacts', {str(onnx_fp32)!r}, '--width', '64', '--height', '32', '--json'"
    code = (
        "import sys\n"
        "from qiedge.cli import main\n"
        f"assert main(['generate', 'a red circle', {common}, '--out', {str(t2i)!r}]) == 0\n"
        f"assert main(['generate', 'make it blue', {common}, '--image', {str(condition)!r}, '--resolution', '64',"
        f" '--out', {str(edit)!r}]) == 0\n"
        "heavy = [m for m in ('torch', 'torchvision', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert t2i.is_file() and edit.is_file()


def test_tokenizer_matches_transformers_processor(onnx_fp32, model):
    from PIL import Image
    from qiedge.core.prompt import chat_prompt
    from qiedge.core.tokenizer import PromptTokenizer

    ours = PromptTokenizer(Artifacts.open(onnx_fp32).facts.tokenizer_json)
    processor = model.load_condition_encoder().processor
    prompts = ["a red circle on the left", "", "日本語 and emoji 🎨", "control \x00\x1b[31m\t\r\n\u202e chars"]
    expected = processor(
        text=[chat_prompt(p, 0) for p in prompts], padding=True, padding_side="left", return_tensors="np"
    )
    tokens = ours(prompts)
    np.testing.assert_array_equal(tokens.input_ids, expected["input_ids"])
    np.testing.assert_array_equal(tokens.attention_mask, expected["attention_mask"])
    image = Image.new("RGB", (96, 64))
    expected = processor(text=[chat_prompt("make it blue", 1)], images=[image], return_tensors="np")
    np.testing.assert_array_equal(ours(["make it blue"], [6]).input_ids, expected["input_ids"])


def test_one_runtime_serves_threads_at_once(onnx_fp32):
    """Requests from several threads on one runtime (one set of sessions) give each request's own
    image, the same as when run alone."""
    from concurrent.futures import ThreadPoolExecutor

    from qiedge.runtime.runner import open_runtime
    from qiedge.runtime.sampler import Request, generate

    runtime = open_runtime(artifacts=onnx_fp32)
    requests = [Request([f"a red circle {i}"], width=64, height=32 * (1 + i % 2), seed=i) for i in range(6)]
    alone = [generate(r, runtime.facts, runtime.sessions) for r in requests]
    with ThreadPoolExecutor(max_workers=3) as pool:
        together = list(pool.map(lambda r: generate(r, runtime.facts, runtime.sessions), requests))
    for a, b in zip(alone, together):
        np.testing.assert_array_equal(a, b)
