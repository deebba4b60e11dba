"""ONNX Runtime's fused operators (`--optimize`): every level keeps the graphs equal to the
reference, and the fused graphs hold the fused operators where the unfused ones held the parts."""

from __future__ import annotations

import onnx
import pytest
from qiedge.core.artifacts import Artifacts
from qiedge.export.run import export_artifacts
from qiedge.export.tensorrt_check import nodes
from qiedge.parity.checks import run_parity
from qiedge.reference_model.model_dir import ModelDir

pytestmark = pytest.mark.slow

# Every kind of attention: masked by key padding (the step), by a bias (the language model's causal
# and padding mask; the transformer prefix's block-causal one takes the same path), and none (the
# VAE; the vision tower's takes the same path).
COMPONENTS = ["condition_encoder", "transformer_step", "vae_decoder"]


@pytest.fixture(scope="module")
def unfused(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("unfused") / "art"
    options = {"optimize": "none"}
    export_artifacts(out, model=ModelDir.open(tiny_dir), components=COMPONENTS, target_options=options)
    return out


def _ops(artifacts, component: str) -> list[str]:
    """Op types of a graph, those inside its subgraphs (the step's If branches) included."""
    path = Artifacts.open(artifacts).path / Artifacts.open(artifacts).component(component)["graph"]
    return [node.op_type for node in nodes(onnx.load(str(path), load_external_data=False).graph)]


def test_unoptimized_graphs_equal_the_reference(unfused, tiny_dir):
    report = run_parity(unfused, tiny_dir, end_to_end=False)
    assert report["passed"], report["failures"]
    for name in COMPONENTS:
        assert Artifacts.open(unfused).component(name)["optimization"] == {"level": "none", "fused": {}}
        assert "MultiHeadAttention" not in _ops(unfused, name)


def test_every_attention_is_fused_at_the_cpu_level(unfused, onnx_fp32, tiny_dir):
    """The default level (the shared fp32 artifacts, whose parity test_onnx_parity checks): each
    Softmax of the unfused graph became one MultiHeadAttention, the step's twice (unpadded and
    padded branches of one If), and each RMSNorm's reciprocal root a division."""
    for name in COMPONENTS:
        softmaxes = _ops(unfused, name).count("Softmax")
        assert softmaxes > 0
        roots = _ops(unfused, name).count("Reciprocal")
        ops = _ops(onnx_fp32, name)
        entry = Artifacts.open(onnx_fp32).component(name)["optimization"]
        assert entry == {"level": "cpu", "fused": {"attention": softmaxes, "rms_norm": roots}}
        assert "Softmax" not in ops and "Reciprocal" not in ops
        branches = 2 if name == "transformer_step" else 1
        assert ops.count("MultiHeadAttention") == branches * softmaxes
        assert ops.count("If") == (softmaxes if name == "transformer_step" else 0)


def test_the_gpu_level_fuses_fp16_attention(tiny_dir, tmp_path):
    """ONNX Runtime's CPU provider has no fp16 MultiHeadAttention, so `cpu` leaves fp16 attention
    unfused (test_onnx_parity's fp16 export) and `gpu` (CUDA's kernels) fuses it; the CUDA
    provider is not here to run it."""
    model = ModelDir.open(tiny_dir)
    out, options = tmp_path / "gpu", {"optimize": "gpu"}
    export_artifacts(out, "onnx", "fp16", model=model, components=["transformer_step"], target_options=options)
    fused = Artifacts.open(out).component("transformer_step")["optimization"]["fused"]["attention"]
    assert fused == model.transformer.num_layers
    assert _ops(out, "transformer_step").count("MultiHeadAttention") == 2 * fused


def test_an_unknown_level_is_refused():
    from qiedge.export.targets import get_target

    with pytest.raises(ValueError, match="--optimize 'fast'"):
        get_target("onnx", optimize="fast")
    with pytest.raises(ValueError, match="tensorrt target takes no --optimize"):
        get_target("tensorrt", optimize="cpu")
