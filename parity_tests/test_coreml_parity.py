"""Core ML packages against the PyTorch reference, proven on Linux by executing the saved ML
Programs op by op in NumPy with fp16 rounding (runtime/coreml_program.py); on macOS the same
checks run Core ML itself."""

from __future__ import annotations

import json
import shutil
import tempfile

import numpy as np
import pytest
from qiedge.core.artifacts import ArtifactError, Artifacts
from qiedge.core.buckets import parse_sizes
from qiedge.core.coreml import can_predict
from qiedge.core.metrics import psnr
from qiedge.parity.checks import run_parity
from qiedge.reference_model.model_dir import ModelDir
from qiedge.runtime.backends.coreml import CoreMLBackend
from qiedge.runtime.bucketed import BucketError

pytestmark = pytest.mark.slow

# Buckets that hold the parity cases: the end-to-end requests' 64x64 and 96x64 images (the
# transformer cases' 24-token targets), and every prompt of the cases.
SIZES = "64x64,96x64"
LENGTHS = (16, 160)
TEXT_TO_IMAGE = ["condition_encoder", "transformer_prefix", "transformer_step", "vae_decoder"]


def export(tiny_dir, out, **options):
    from qiedge.export.run import export_artifacts

    options = {"sizes": parse_sizes(SIZES), "prompt_lengths": LENGTHS, **options}
    components = options.pop("components", None)
    return export_artifacts(
        out, target="coreml", model=ModelDir.open(tiny_dir), components=components, target_options=options
    )


@pytest.fixture(scope="module")
def neural_engine(tiny_dir, tmp_path_factory):
    """The default layout (`all`: split-einsum attention), the transformer in two chunks."""
    out = tmp_path_factory.mktemp("coreml") / "ne"
    export(tiny_dir, out, max_chunk_mb=0.2)
    return out


def test_every_component_and_whole_images_within_35_db(neural_engine, tiny_dir):
    report = run_parity(neural_engine, tiny_dir)
    assert report["passed"], report["failures"]
    for name, result in report["components"].items():
        assert result["cases"], f"{name}: no case ran"
        assert result["worst_psnr_db"] >= 35, name
    images = report["end_to_end"]["cases"]
    assert {c["case"] for c in images} == {"t2i 64x64 b1", "t2i 96x64 b2 padded"}
    assert min(c["psnr_db"] for c in images) >= 35
    manifest = Artifacts.open(neural_engine).manifest
    step = manifest["components"]["transformer_step"]
    assert step["attention"] == "split_einsum" and [c["layers"] for c in step["chunks"]] == [[0, 1], [1, 2]]
    assert manifest["components"]["transformer_prefix"]["chunks"][0]["graph"] == step["chunks"][0]["graph"]
    assert {"pow", "reduce_mean", "rsqrt", "sin", "cos"} <= set(step["fp32_ops"])


def test_condition_encoder_in_chunks(deeper_encoder_dir, tmp_path):
    """A three-layer encoder in three packages: the first embeds the prompt, the second takes its
    hidden states and still a deepstack feature, the third the hidden states alone."""
    out = tmp_path / "encoder"
    export(deeper_encoder_dir, out, max_chunk_mb=0.12, components=["condition_encoder"])
    report = run_parity(out, deeper_encoder_dir, end_to_end=False)
    assert report["passed"], report["failures"]
    assert report["components"]["condition_encoder"]["cases"]
    assert report["components"]["condition_encoder"]["worst_psnr_db"] >= 35
    chunked = Artifacts.open(out).component("condition_encoder")["chunks"]
    assert [c["layers"] for c in chunked] == [[0, 1], [1, 2], [2, 3]]
    handed = ["hidden_in", "attention_mask", "position_ids"]
    assert [t["name"] for t in chunked[1]["inputs"]] == [*handed, "deepstack_embeds", "image_index"]
    assert [t["name"] for t in chunked[2]["inputs"]] == handed
    assert [[t["name"] for t in c["outputs"]] for c in chunked] == [["hidden"], ["hidden"], ["hidden_states"]]


def test_plain_attention_unchunked(tiny_dir, tmp_path):
    out = tmp_path / "gpu"
    export(tiny_dir, out, compute_units="cpu_and_gpu", prompt_lengths=(160,), components=TEXT_TO_IMAGE)
    report = run_parity(out, tiny_dir)
    assert report["passed"], report["failures"]
    assert min(c["psnr_db"] for c in report["end_to_end"]["cases"]) >= 35
    step = Artifacts.open(out).component("transformer_step")
    assert step["attention"] == "plain" and "chunks" not in step
    assert set(step["functions"]) == {"step_64x64_t160", "step_96x64_t160"}


def test_vae_decoder_in_tiles(tiny_dir, tmp_path):
    """--vae-tile: the decoder's functions are its tiles' shapes, and decoded in them it matches
    the reference decoded in the same tiles."""
    out = tmp_path / "tiles"
    export(tiny_dir, out, sizes=parse_sizes("192x96"), vae_tile=128, components=["vae_decoder"])
    # 12x6 latents in tiles of 8 every 6: 8 and 6 wide (starting at 0 and 6), 6 high (starting at 0).
    assert set(Artifacts.open(out).component("vae_decoder")["functions"]) == {"model_128x96", "model_96x96"}
    report = run_parity(out, tiny_dir, end_to_end=False)
    assert report["passed"], report["failures"]
    cases = {c["case"]: c["outputs"]["image"]["psnr_db"] for c in report["components"]["vae_decoder"]["cases"]}
    assert cases.keys() == {"192x96 in 128 px tiles"} and min(cases.values()) >= 35


def weights_bytes(package) -> int:
    return sum(f.stat().st_size for f in package.rglob("weight.bin"))


def test_buckets_share_one_copy_of_the_weights(tiny_dir, tmp_path, monkeypatch):
    temp = tmp_path / "temp"  # where coremltools writes its temporary packages
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    one = export(
        tiny_dir, tmp_path / "one", sizes=parse_sizes("64x64"), prompt_lengths=(16,), components=["vae_decoder"]
    )
    many = export(
        tiny_dir, tmp_path / "many", sizes=parse_sizes("64x64,96x64"), components=["vae_decoder"]
    )  # two copies would double the bytes
    assert len(many["components"]["vae_decoder"]["functions"]) == 2 > len(one["components"]["vae_decoder"]["functions"])
    package = "vae_decoder/model.mlpackage"
    assert weights_bytes(tmp_path / "many" / package) <= 1.05 * weights_bytes(tmp_path / "one" / package)
    assert not list(temp.iterdir())  # none left behind (a 7B chunk's are 833 MB each)


def test_a_request_without_bucket_is_refused_naming_the_buckets(neural_engine):
    from qiedge.runtime.runner import open_runtime
    from qiedge.runtime.sampler import Request, generate

    with pytest.raises(ValueError, match=r"size 64x32 has no bucket in .*; exported sizes: 64x64, 96x64"):
        open_runtime(artifacts=neural_engine, request=Request(["a star"], width=64, height=32))
    runtime = open_runtime(artifacts=neural_engine)
    assert runtime.choice.backend == "coreml"
    with pytest.raises(BucketError, match=r"transformer_step: 8 image tokens .*has no bucket; exported: 64x64_t16"):
        generate(Request(["a star"], width=64, height=32), runtime.facts, runtime.sessions)
    with pytest.raises(
        BucketError, match=r"a prompt of \d+ tokens with its chat template has no bucket; exported: t16, t160"
    ):
        generate(Request(["a star " * 100], width=64, height=64), runtime.facts, runtime.sessions)


def test_tampered_package_is_refused(neural_engine, tmp_path):
    copy = tmp_path / "art"
    shutil.copytree(neural_engine, copy)
    weights = next((copy / "vae_decoder").rglob("weight.bin"))
    with open(weights, "r+b") as f:
        f.seek(256)
        byte = f.read(1)
        f.seek(256)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ArtifactError, match="weight.bin does not match the sha256"):
        CoreMLBackend(Artifacts.open(copy), native=False).load("vae_decoder")


def test_onnx_runtime_is_told_to_use_the_coreml_backend(neural_engine):
    from qiedge.runtime.runner import open_runtime

    with pytest.raises(ValueError, match="holds coreml artifacts; .* use --backend coreml"):
        open_runtime(artifacts=neural_engine, backend="onnxruntime")


@pytest.mark.skipif(not can_predict(), reason="Core ML prediction exists only on macOS")
def test_core_ml_itself_agrees_with_the_interpreter(neural_engine, tiny_dir):
    artifacts = Artifacts.open(neural_engine)
    native, interpreted = CoreMLBackend(artifacts, native=True), CoreMLBackend(artifacts, native=False)
    latents = np.random.default_rng(0).standard_normal((1, 64, 4, 4), dtype=np.float32)
    a = native.load("vae_decoder").run({"latents": latents})["image"]
    b = interpreted.load("vae_decoder").run({"latents": latents})["image"]
    assert psnr(a, b, peak=2.0) >= 40


def test_cli_parity_on_core_ml_artifacts(neural_engine, tiny_dir, tmp_path):
    from qiedge.cli import main

    report = tmp_path / "report.json"
    assert main(["parity", "--artifacts", str(neural_engine), "--model", str(tiny_dir), "--json", str(report)]) == 0
    assert json.loads(report.read_text())["passed"]


def test_ios17_gets_one_package_per_graph(tiny_dir, tmp_path):
    """No multifunction packages before iOS18: one bucket, one package per graph (prefix and step
    apart), still proven by parity."""
    out = tmp_path / "ios17"
    components = ["transformer_prefix", "transformer_step"]
    export(
        tiny_dir,
        out,
        deployment_target="iOS17",
        sizes=parse_sizes("96x64"),
        prompt_lengths=(160,),
        components=components,
    )
    artifacts = Artifacts.open(out)
    assert [artifacts.component(n)["graph"] for n in components] == [
        "transformer/prefix.mlpackage",
        "transformer/step.mlpackage",
    ]
    assert list(artifacts.component("transformer_step")["functions"]) == ["main"]
    report = run_parity(out, tiny_dir, end_to_end=False)
    assert report["passed"], report["failures"]
