"""Untrusted files, fuzzed: real files of every kind qiedge reads (weights, configs, tokenizer,
manifest, ONNX graph, condition images) mutated a few hundred times each (truncated, bytes
flipped, header and JSON fields rewritten). Every case must load correctly or be refused with
one of qiedge's errors naming the file; any other exception (a raw library error, a type error)
is a defect, and so is memory growing by what a corrupt header claims."""

from __future__ import annotations

import json
import random
import resource
import shutil
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from qiedge.core.artifacts import Artifacts
from qiedge.core.tokenizer import PromptTokenizer
from qiedge.reference_model import presets
from qiedge.reference_model.model_dir import ModelDir, init_model_dir
from qiedge.reference_model.vae import QwenImage2VAE
from qiedge.reference_model.weights import load_into
from qiedge.runtime.images import open_condition

CASES = 200
WEIRD = [None, True, -1, 0, 2**40, 1e308, float("nan"), "x", "", [], [1, "a"], {}, {"a": 1}, 3.5, [2**40] * 3]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return init_model_dir(presets.TINY, tmp_path_factory.mktemp("fuzz") / "tiny", seed=0)


@pytest.fixture(scope="module")
def artifacts(tiny, tmp_path_factory):
    from qiedge.export.run import export_artifacts

    out = tmp_path_factory.mktemp("fuzz-art") / "art"
    export_artifacts(out, model=ModelDir.open(tiny), components=["vae_decoder"])
    return out


def expect_clean(run, named: str) -> str:
    """Run a case: it loads, or a ValueError (every qiedge error is one) names the file."""
    try:
        run()
        return "loaded"
    except ValueError as e:
        assert named in str(e), f"the error does not name {named}: {e}"
        return "refused"


def truncated(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data))]


def flipped(data: bytes, rng: random.Random, region: int | None = None) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(region or len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _safetensors_mutation(data: bytes, rng: random.Random) -> bytes:
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + size])
    kind = rng.randrange(5)
    if kind == 0:
        return truncated(data, rng)
    if kind == 1:
        return flipped(data, rng, 8 + size)
    if kind == 2:  # the header length itself
        return struct.pack("<Q", rng.choice([0, 1, size + 1, 2**40, 2**64 - 1])) + data[8:]
    key = rng.choice([k for k in header if k != "__metadata__"])
    field = rng.choice(["shape", "data_offsets", "dtype"])
    header[key][field] = rng.choice(
        {
            "shape": [[10**12], [-1, 4], [2**31, 2**31], [], ["a"]],
            "data_offsets": [[-5, 10], [0, 10**15], [10, 0], [0], "x"],
            "dtype": ["F99", "I8", "BOOL", 7],
        }[field]
    )
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data[8 + size :]


def _load_vae(folder):
    with torch.device("meta"):
        module = QwenImage2VAE(presets.TINY.vae)
    load_into(module, folder)


@pytest.mark.slow
def test_weights(tiny, tmp_path):
    """The VAE's safetensors, loaded strictly into its module."""
    source = next((tiny / "vae").glob("*.safetensors")).read_bytes()
    folder = tmp_path / "vae"
    folder.mkdir()
    file = folder / "diffusion_pytorch_model.safetensors"
    rng, outcomes, before = random.Random(0), [], _peak_mb()
    for _ in range(CASES):
        file.write_bytes(_safetensors_mutation(source, rng))
        # A key or shape the config does not expect is named by its folder, with the key.
        outcomes.append(expect_clean(lambda: _load_vae(folder), str(folder)))
    assert outcomes.count("refused") > CASES // 2
    assert _peak_mb() - before < 500


def _json_mutation(text: str, rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return text[: rng.randrange(len(text))]
    if kind == 1:
        return rng.choice(["[]", "null", "3", '"x"', "{"])
    data = json.loads(text)
    key = rng.choice(sorted(data))
    if kind == 2:
        del data[key]
    else:
        data[key] = rng.choice(WEIRD)
    return json.dumps(data)


@pytest.mark.parametrize("config", ["transformer/config.json", "vae/config.json", "scheduler/scheduler_config.json"])
def test_configs(tiny, tmp_path, config):
    copy = tmp_path / "model"
    shutil.copytree(tiny, copy)
    file = copy / config
    source, rng = file.read_text(), random.Random(1)
    for _ in range(CASES // 2):
        file.write_text(_json_mutation(source, rng))
        expect_clean(lambda: ModelDir.open(copy), str(file))
    file.write_bytes(b"\xff\xfe{")
    assert expect_clean(lambda: ModelDir.open(copy), str(file)) == "refused"


def test_tokenizer(tiny, tmp_path):
    file = tmp_path / "tokenizer.json"
    source, rng = (tiny / "processor" / "tokenizer.json").read_text(), random.Random(2)

    def tokenize():
        PromptTokenizer(file)(["a red circle"])

    for i in range(CASES):
        if i % 2:
            file.write_text(_json_mutation(source, rng))
        else:
            file.write_bytes(flipped(source.encode(), rng))
        expect_clean(tokenize, str(file))


def _manifest_mutation(manifest: dict, rng: random.Random) -> dict:
    data = json.loads(json.dumps(manifest))
    section = rng.choice(["top", "model", "scheduler", "vision", "component"])
    if section == "top":
        target = data
    elif section == "model":
        target = data["model"]
    elif section in ("scheduler", "vision"):
        target = data["model"][section]
    else:
        target = data["components"]["vae_decoder"]
    key = rng.choice(sorted(target))
    if rng.random() < 0.3:
        del target[key]
    else:
        target[key] = rng.choice(WEIRD + ["../x", "/etc/passwd"])
    return data


def test_manifests(artifacts, tmp_path):
    copy = tmp_path / "art"
    shutil.copytree(artifacts, copy)
    file = copy / "manifest.json"
    manifest, rng = json.loads(file.read_text()), random.Random(3)

    def load():
        store = Artifacts.open(copy)
        _ = store.facts  # every value type-checked
        store.verify("vae_decoder")

    outcomes = []
    for _ in range(CASES):
        file.write_text(json.dumps(_manifest_mutation(manifest, rng)))
        outcomes.append(expect_clean(load, str(copy)))
    assert outcomes.count("refused") > CASES // 2


def test_onnx_graphs_with_their_hash_rewritten(artifacts, tmp_path):
    """A corrupt graph whose manifest hash was rewritten to match: ONNX Runtime's refusal is named."""
    from qiedge.core.files import sha256_file
    from qiedge.runtime.backends.onnx_runtime import OnnxRuntimeBackend

    copy = tmp_path / "art"
    shutil.copytree(artifacts, copy)
    graph = copy / "vae_decoder" / "model.onnx"
    source, manifest, rng = graph.read_bytes(), json.loads((copy / "manifest.json").read_text()), random.Random(4)
    for _ in range(CASES // 4):
        graph.write_bytes(truncated(source, rng) if rng.random() < 0.5 else flipped(source, rng))
        manifest["components"]["vae_decoder"]["files"]["vae_decoder/model.onnx"] = sha256_file(graph)
        (copy / "manifest.json").write_text(json.dumps(manifest))
        expect_clean(lambda: OnnxRuntimeBackend(Artifacts.open(copy)).load("vae_decoder"), "vae_decoder")


def test_condition_images(tmp_path):
    rng, file = random.Random(5), tmp_path / "cond.png"
    pixels = np.random.default_rng(0).integers(0, 256, (40, 56, 4), dtype=np.uint8)
    Image.fromarray(pixels, "RGBA").save(file)
    source, outcomes = file.read_bytes(), []
    for _ in range(CASES):
        file.write_bytes(truncated(source, rng) if rng.random() < 0.5 else flipped(source, rng))
        outcomes.append(expect_clean(lambda: open_condition(file), str(file)))
    assert outcomes.count("refused") > CASES // 4


def test_shard_index_cannot_point_outside_its_folder(tiny, tmp_path):
    from qiedge.reference_model.weights import weight_files

    folder = tmp_path / "vae"
    folder.mkdir()
    for shard in ["../vae/x.safetensors", "/etc/passwd", "sub/x.safetensors", ".."]:
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": shard}}))
        with pytest.raises(ValueError, match="shards must be files beside the index"):
            weight_files(folder)
    (folder / "model.safetensors.index.json").write_text("[1]")
    with pytest.raises(ValueError, match="is not a safetensors index"):
        weight_files(folder)


@pytest.fixture(scope="module")
def coreml_artifacts(tiny, tmp_path_factory):
    from qiedge.core.buckets import Size
    from qiedge.export.run import export_artifacts

    out = tmp_path_factory.mktemp("fuzz-coreml") / "art"
    options = {"sizes": (Size(64, 32),), "prompt_lengths": (8,)}
    export_artifacts(out, "coreml", model=ModelDir.open(tiny), components=["vae_decoder"], target_options=options)
    return out


@pytest.mark.slow
def test_coreml_packages_with_their_hashes_rewritten(coreml_artifacts, tmp_path):
    """A corrupt file in a Core ML package whose manifest hash was rewritten to match: loading the
    saved program either works or is refused naming the package."""
    from qiedge.core.files import sha256_file
    from qiedge.runtime.backends.coreml import CoreMLBackend

    copy = tmp_path / "art"
    shutil.copytree(coreml_artifacts, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    files = manifest["components"]["vae_decoder"]["files"]
    sources = {name: (copy / name).read_bytes() for name in files}
    rng = random.Random(6)
    for _ in range(CASES // 4):
        name = rng.choice(sorted(files))
        file, source = copy / name, sources[name]
        file.write_bytes(truncated(source, rng) if rng.random() < 0.5 else flipped(source, rng))
        files[name] = sha256_file(file)
        (copy / "manifest.json").write_text(json.dumps(manifest))
        expect_clean(lambda: CoreMLBackend(Artifacts.open(copy), native=False).load("vae_decoder"), "vae_decoder")
        file.write_bytes(source)
        files[name] = sha256_file(file)
