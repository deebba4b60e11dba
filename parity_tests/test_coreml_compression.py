"""Core ML's compression modes against the PyTorch reference, the transformer chunked, proven as
test_coreml_parity.py proves the uncompressed packages."""

from __future__ import annotations

import pytest
from qiedge.core.artifacts import Artifacts
from qiedge.core.buckets import parse_sizes
from qiedge.parity.checks import run_parity
from qiedge.reference_model.model_dir import ModelDir

from .test_coreml_parity import TEXT_TO_IMAGE, export, weights_bytes

pytestmark = pytest.mark.slow

# Bytes of each compressed transformer against fp16's: int8 <= 55%, 4-bit <= 30%. (`mixed` has no
# bound: on the two-block tiny model its 8-bit first and last blocks are the whole model.)
SIZE_RATIO = {"int8": 0.55, "int4": 0.30, "palettize4": 0.30, "palettize6": 0.45}


@pytest.fixture(scope="module")
def uncompressed_bytes(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("coreml") / "fp16"
    export(
        tiny_dir,
        out,
        sizes=parse_sizes("96x64"),
        prompt_lengths=(16,),
        components=["transformer_prefix", "transformer_step"],
    )
    return weights_bytes(out / "transformer")


def two_chunks(tiny_dir, mode: str, sensitive: tuple[str, ...]) -> float:
    """A --max-chunk-mb that cuts the tiny (two-block) transformer in two at this compression."""
    import torch
    from qiedge.export.coreml_compress import stored_bytes
    from qiedge.export.run import model_configs
    from qiedge.export.specs import SPECS

    with torch.device("meta"):
        transformer = SPECS["transformer_step"].reference(model_configs(ModelDir.open(tiny_dir), None))
    sensitive = tuple(p.replace("{last}", "1") for p in sensitive)
    total = sum(stored_bytes(mode, 2, k, tuple(p.shape), sensitive) for k, p in transformer.named_parameters())
    return 0.9 * total / 2**20


@pytest.mark.parametrize("mode", ["int8", "int4", "palettize4", "palettize6", "mixed"])
def test_compressed_packages_against_the_reference(mode, tiny_dir, tmp_path, uncompressed_bytes):
    """Every compression mode, the transformer chunked: per component and whole images against the
    fp32 reference (8- and 6-bit at fp16's 35 dB, 4-bit at the looser measured bound), and the
    packages' size against fp16's."""
    from qiedge.parity.checks import COREML_PSNR
    from qiedge.quantization.recipe import Recipe

    out = tmp_path / mode
    sensitive = Recipe.load("int8").keep_high_precision if mode == "mixed" else ()
    export(
        tiny_dir,
        out,
        compress=mode,
        sensitive=sensitive,
        max_chunk_mb=two_chunks(tiny_dir, mode, sensitive),
        prompt_lengths=(160,),
        components=TEXT_TO_IMAGE,
    )
    report = run_parity(out, tiny_dir)
    assert report["passed"], report["failures"]
    assert min(c["psnr_db"] for c in report["end_to_end"]["cases"]) >= COREML_PSNR[mode]
    manifest = Artifacts.open(out).manifest["components"]
    assert (
        manifest["transformer_step"]["compression"]["mode"] == mode and len(manifest["transformer_step"]["chunks"]) == 2
    )
    assert manifest["vae_decoder"]["compression"] is None  # the VAE stays fp16
    assert weights_bytes(out / "transformer") <= SIZE_RATIO.get(mode, 1.0) * uncompressed_bytes
