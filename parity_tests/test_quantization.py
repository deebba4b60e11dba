"""INT8 / FP8 (and weight-only INT4) transformer: the Q/DQ ONNX graph computes what the fake-quant
model computes, and on the trained demo checkpoint INT8 and FP8 keep the image (cosine >= 0.99, PSNR >= 30 dB)."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from qiedge.core.artifacts import Artifacts
from qiedge.core.metrics import Comparison
from qiedge.export.cases import PREFIX
from qiedge.export.specs import SPECS
from qiedge.parity.checks import cached_step_velocities, case_context, image_bound
from qiedge.quantization.accuracy import torch_sessions
from qiedge.quantization.calibrate import calibrate
from qiedge.quantization.encoder import encoder_quants, quantized_encoder
from qiedge.quantization.fake_quant import attention_quants, fake_quantized, layer_quants
from qiedge.quantization.recipe import EncoderWeights, Recipe
from qiedge.quantization.run import quantize
from qiedge.runtime import ort_int8
from qiedge.runtime.backends.onnx_runtime import OnnxRuntimeBackend
from qiedge.runtime.evaluate import prompt_set
from qiedge.runtime.hardware import detect

pytestmark = pytest.mark.slow
QDQ_REL_L2 = 5e-3


def small_calibration(recipe: Recipe) -> Recipe:
    return replace(recipe, calibration_set=replace(recipe.calibration_set, count=8, cfg_prompts=1))


@dataclass
class Quantized:
    out: Path  # Q/DQ artifacts with every block quantized
    record: dict
    cases: list[tuple[dict, dict, np.ndarray]]  # (prefix feeds, step feeds, the fake-quant model's velocity)


@pytest.fixture(scope="module")
def quantized(tiny_dir, model, tmp_path_factory):
    made = {}

    def get(fmt: str) -> Quantized:
        if fmt not in made:
            made[fmt] = _quantize_every_block(fmt, tiny_dir, model, tmp_path_factory.mktemp(fmt))
        return made[fmt]

    return get


def _quantize_every_block(fmt, tiny_dir, model, out) -> Quantized:
    recipe = small_calibration(Recipe.load(fmt))
    recipe = replace(
        recipe,
        keep_high_precision=("img_in", "txt_in.*", "time_text_embed.*", "modulation.*", "norm_out.*", "proj_out"),
    )  # every block quantized
    # The accuracy judge is not what these tests check: four prompts keep it quick.
    prompts = out / "eval_prompts.txt"
    prompts.write_text("\n".join(prompt_set("held-out", 4)))
    record = quantize(
        tiny_dir,
        recipe,
        out / "artifacts",
        eval_prompts=str(prompts),
        components=["transformer_prefix", "transformer_step"],
        log=lambda m: None,
    )
    out = out / "artifacts"
    calibration = calibrate(tiny_dir, recipe) if recipe.calibrated else None
    reference = model.load_transformer()
    quants = layer_quants(reference, recipe, calibration, record["layers_quantized"])
    attention = attention_quants(reference, recipe, calibration) if calibration else {}
    fake = fake_quantized(reference, quants, recipe.format, attention)
    torch_prefix, torch_step = torch_sessions(fake)
    cases = []
    for _, feeds in SPECS["transformer_step"].cases(case_context(Artifacts.open(out), model)):
        prefix = feeds.pop(PREFIX)
        cases.append((prefix, feeds, torch_step.run({**feeds, **torch_prefix.run(prefix)})["velocity"]))
    return Quantized(out, record, cases)


@pytest.mark.parametrize("fmt", ["int8", "fp8", "int4", "fp8-attention", "int8-dynamic"])
def test_qdq_graph_equals_the_fake_quant_model(fmt, quantized, model):
    q = quantized(fmt)
    assert len(q.record["layers_quantized"]) == 7 * model.transformer.num_layers
    attention = len(q.record["attention_fp8"])
    assert attention == (model.transformer.num_layers if fmt == "fp8-attention" else 0)
    manifest = Artifacts.open(q.out).manifest
    precision = Recipe.load(fmt).format
    assert manifest["components"]["transformer_step"]["precision"] == precision
    assert manifest["quantization"]["scales_hash"] == q.record["scales_hash"]
    assert manifest["quantization"]["accuracy"]["measured_on"]["cpu"] == detect().summary()
    kernels = manifest["quantization"].get("onnxruntime_int8", {}).get("where_u8s8_kernels_saturate", {})
    assert kernels.get("session_config") == (ort_int8.EXACT_KERNELS if precision == "int8" else None)

    import onnx

    graph = onnx.load(str(q.out / "transformer" / "step.onnx"), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    layers = len(q.record["layers_quantized"])
    weight_only, dynamic = fmt == "int4", fmt == "int8-dynamic"
    # FP8 attention: q, k, the probabilities and v, each through its own Q/DQ.
    assert ops.count("QuantizeLinear") == (0 if weight_only or dynamic else layers) + 4 * attention
    assert ops.count("DequantizeLinear") == (0 if dynamic else 1 if weight_only else 2) * layers + 4 * attention
    assert ops.count("DynamicQuantizeLinear") == ops.count("MatMulInteger") == (layers if dynamic else 0)
    # ONNX Runtime's fused attention, except where FP8 attention keeps its Q/DQ pattern for TensorRT.
    fused = manifest["components"]["transformer_step"]["optimization"]["fused"]
    assert (fused["attention"], ops.count("Softmax")) == (model.transformer.num_layers - attention, attention)

    onnx = cached_step_velocities(OnnxRuntimeBackend(Artifacts.open(q.out)), [(p, f) for p, f, _ in q.cases])
    for actual, (_, _, expected) in zip(onnx, q.cases):
        # Expected differences: activations flipping at a rounding boundary (int8, fp8); weight-only
        # int4 has none to flip (its fused kernel keeps the activations in float), only sums in
        # another order.
        assert Comparison.of(actual, expected).rel_l2 <= (1e-5 if weight_only else QDQ_REL_L2)


# Runs under an emulated CPU: the backend's sessions on int8 artifacts, then the same sessions
# built without the remedy, so the test shows both what saturation does and that it is avoided.
EMULATED = """
import sys, json, numpy as np
from qiedge.parity.checks import cached_step_velocities
from qiedge.runtime import ort_int8
from qiedge.runtime import ort_int8
from qiedge.core.artifacts import Artifacts
from qiedge.runtime.backends.onnx_runtime import OnnxRuntimeBackend
from qiedge.runtime.evaluate import prompt_set
from qiedge.runtime.hardware import detect
backend, data = OnnxRuntimeBackend(Artifacts.open(sys.argv[1])), np.load(sys.argv[2])
part = lambda i, kind: {k.split(".", 2)[2]: data[k] for k in data.files if k.startswith(f"{i}.{kind}.")}
cases = [(part(i, "prefix"), part(i, "step")) for i in range(int(data["n"]))]
saturates = ort_int8.saturates()
remedied = cached_step_velocities(backend, cases)
ort_int8.session_config = lambda precision: {}
plain = cached_step_velocities(backend, cases)
outputs = {f"{kind}.{i}": v for kind, vs in (("remedied", remedied), ("plain", plain)) for i, v in enumerate(vs)}
np.savez(sys.argv[3], **outputs)
print(json.dumps({"saturates": saturates}))
"""


@pytest.mark.skipif(
    shutil.which("qemu-x86_64") is None or platform.machine() != "x86_64",
    reason="needs an x86-64 host with qemu-x86_64 (Debian's qemu-user) to emulate a CPU without VNNI",
)
def test_int8_graph_is_exact_on_a_cpu_without_vnni(quantized, tmp_path):
    """ONNX Runtime on an emulated Haswell (AVX2, no VNNI): its u8s8 kernels saturate there, and
    the backend's sessions avoid them, so the graph still computes what the fake-quant model does."""
    q = quantized("int8")
    feeds = {"n": np.array(len(q.cases))}
    for i, (prefix, step, _) in enumerate(q.cases):
        feeds.update({f"{i}.prefix.{k}": v for k, v in prefix.items()})
        feeds.update({f"{i}.step.{k}": v for k, v in step.items()})
    np.savez(tmp_path / "cases.npz", **feeds)
    result = subprocess.run(
        [
            "qemu-x86_64",
            "-cpu",
            "Haswell",
            sys.executable,
            "-c",
            EMULATED,
            str(q.out),
            str(tmp_path / "cases.npz"),
            str(tmp_path / "out.npz"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.splitlines()[-1]) == {"saturates": True}
    outputs = np.load(tmp_path / "out.npz")
    expected = [e for _, _, e in q.cases]
    remedied = [Comparison.of(outputs[f"remedied.{i}"], e).rel_l2 for i, e in enumerate(expected)]
    plain = [Comparison.of(outputs[f"plain.{i}"], e).rel_l2 for i, e in enumerate(expected)]
    assert max(remedied) <= QDQ_REL_L2
    assert max(plain) > QDQ_REL_L2  # what a CPU without VNNI computed before: saturated sums


@pytest.mark.parametrize("fmt", ["int8", "fp8"])
def test_demo_checkpoint_keeps_the_image(fmt, tmp_path):
    from qiedge.reference_model.model_dir import demo_model_dir

    record = quantize(
        demo_model_dir(),
        small_calibration(Recipe.load(fmt)),
        tmp_path / fmt,
        components=["transformer_step"],
        log=lambda m: None,
    )
    accuracy = record["accuracy"]
    assert min(s["cosine_min"] for s in accuracy["per_step"]) >= 0.99
    assert accuracy["psnr_db"] >= 30
    # One-sided: a prompt whose fp32 blob sits at a threshold may flip either way.
    assert accuracy["adherence"] >= accuracy["fp32_adherence"] - 0.03
    assert json.loads((tmp_path / fmt / "recipe.json").read_text())["format"] == fmt


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_encoder_graph_equals_the_fake_quant_encoder(fmt, tiny_dir, model, tmp_path):
    import onnx

    recipe = replace(Recipe.load("int4"), encoder=EncoderWeights.named(fmt))
    prompts = tmp_path / "eval_prompts.txt"
    prompts.write_text("\n".join(prompt_set("held-out", 4)))
    out = tmp_path / "artifacts"
    report = tmp_path / "report"
    record = quantize(
        tiny_dir, recipe, out, report, eval_prompts=str(prompts), components=["condition_encoder"], log=lambda m: None
    )
    encoder, artifacts = record["encoder"], Artifacts.open(out)
    assert (
        f"Condition encoder: {len(encoder['layers_quantized'])} layers {fmt} weight-only"
        in (report / "report.html").read_text()
    )
    layers = 7 * model.encoder_config["text_config"]["num_hidden_layers"]  # q, k, v, o, gate, up, down
    assert len(encoder["layers_quantized"]) == layers and encoder["format"] == fmt
    entry = artifacts.component("condition_encoder")
    assert (entry["precision"], entry["quantization"]["scales_hash"]) == (fmt, encoder["scales_hash"])
    assert artifacts.manifest["quantization"]["encoder"] == encoder

    graph = onnx.load(str(out / entry["graph"]), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    assert (ops.count("DequantizeLinear"), ops.count("QuantizeLinear")) == (layers, 0)  # weight-only
    stored = {
        t.name: t.data_type for t in graph.initializer if t.name.removesuffix(".weight") in encoder["layers_quantized"]
    }
    assert set(stored.values()) == {onnx.TensorProto.INT8 if fmt == "int8" else onnx.TensorProto.INT4}
    assert len(stored) == layers

    fp32 = model.load_condition_encoder()
    fake = quantized_encoder(fp32, encoder_quants(fp32.model, recipe.encoder), fmt)
    first = encoder["layers_quantized"][0]
    assert type(fp32.model.get_submodule(first)) is torch.nn.Linear  # the original is left as it was
    embeddings = "model.language_model.embed_tokens"
    assert fake.model.get_submodule(embeddings).weight is fp32.model.get_submodule(embeddings).weight  # shared
    graph_encoder = OnnxRuntimeBackend(artifacts).prompt_encoder(artifacts.facts)
    batch = ["a red circle on the left on a blue background", "two small green squares"]
    ours, expected, reference = (e(batch, []) for e in (graph_encoder, fake, fp32))
    assert (ours.mask == expected.mask).all()
    error, cost = Comparison.of(ours.embeds, expected.embeds), Comparison.of(expected.embeds, reference.embeds)
    print(f"{fmt}: graph vs fake-quant rel L2 {error.rel_l2:.2e}; fake-quant vs fp32 {cost.rel_l2:.2e}")
    # The same fp32 arithmetic summed in another order: ONNX Runtime's MatMulNBits keeps the
    # activations in float (its default would quantize them to int8: 5e-3).
    assert error.rel_l2 <= 1e-5
    assert cost.rel_l2 > 100 * error.rel_l2  # the graph computes the quantized weights, not fp32's
    assert encoder["hidden_states"]["cosine_min"] < 1


def test_recipe_keeps_named_layers():
    recipe = Recipe.load("int8")
    layers = [f"transformer_blocks.{i}.attn.to_q" for i in range(4)] + ["img_in", "proj_out", "modulation.1"]
    assert recipe.quantized_layers(layers, 4) == ["transformer_blocks.1.attn.to_q", "transformer_blocks.2.attn.to_q"]
    with pytest.raises(ValueError, match="format"):
        replace(recipe, format="int3")


def test_a_target_psnr_the_quantized_encoder_alone_misses_is_refused(tiny_dir, tmp_path):
    prompts = tmp_path / "eval_prompts.txt"
    prompts.write_text("\n".join(prompt_set("held-out", 4)))
    recipe = replace(Recipe.load("int4"), encoder=EncoderWeights.named("int4"))
    with pytest.raises(ValueError, match=r"--target-psnr 200 is out of reach: the quantized encoder alone gives \d"):
        quantize(tiny_dir, recipe, tmp_path / "art", target_psnr=200, eval_prompts=str(prompts), log=lambda m: None)
    assert not (tmp_path / "art").exists()


def test_encoder_weights_in_a_recipe_file(tmp_path):
    recipe = replace(Recipe.load("int8"), encoder=EncoderWeights.named("int4"))
    path = tmp_path / "recipe.json"
    path.write_text(recipe.to_json())
    assert Recipe.load(str(path)) == recipe and recipe.encoder.granularity == "group:64"
    assert (recipe.encoder.bits, recipe.bits) == (4.25, 8)  # int4: an fp16 scale per 64 weights
    for bad in (("int8", 64), ("int4", None), ("int4", 48), ("fp8", None)):
        with pytest.raises(ValueError, match="encoder weights are int8"):
            EncoderWeights(*bad)
    path.write_text(recipe.to_json().replace('"group_size": 64\n  }', '"group_size": 64, "bits": 3\n  }'))
    with pytest.raises(ValueError, match=f"recipe {path}: .*unexpected keyword argument 'bits'"):
        Recipe.load(str(path))


def test_the_image_bound_is_the_loosest_graphs():
    manifest = {"precision": "int8", "components": {"transformer_step": {"precision": "int8"}}}
    assert image_bound(manifest) == 30.0
    manifest["components"]["condition_encoder"] = {"precision": "int4"}  # weight-only encoder
    assert image_bound(manifest) == 25.0


def test_a_faulty_quantized_model_is_measured_to_the_end(tiny_dir):
    """NaN from the quantized side is counted in the figures (and drawn black), not a stop."""
    from qiedge.quantization.accuracy import Evaluation, Judge

    judge = Judge(tiny_dir, Evaluation.on(["a red circle", "a blue square"], size=64, batch=1))
    prefix, step = torch_sessions(judge.reference)

    class Faulty:
        def run(self, feeds):
            velocity = step.run(feeds)["velocity"].copy()
            velocity[:, :3] = np.nan
            return {"velocity": velocity}

    per_step = judge.per_step_of(prefix, Faulty())
    assert all(s["non_finite"] == 2 * 3 * velocity_channels(judge) for s in per_step)
    assert all(s["cosine_min"] is None for s in per_step)
    figures = judge.image_figures(judge.images_of(prefix, Faulty()))
    assert figures["non_finite"] > 0 and np.isfinite(figures["psnr_db"])
    healthy = judge.image_figures(judge.images_of(prefix, step))
    assert healthy["non_finite"] == 0 and healthy["psnr_db"] == float("inf")


def test_per_step_figures_along_the_recorded_trajectory_equal_running_fp32_beside(tiny_dir):
    """The judge records fp32's steps once and measures a quantized model along them, decoding no
    image; the figures are those of running fp32 beside the quantized model at every step, and a
    replay of other requests is refused."""
    import copy

    import torch
    from qiedge.quantization.accuracy import Evaluation, Judge
    from qiedge.runtime.sampler import generate

    judge = Judge(tiny_dir, Evaluation.on(["a red circle", "a blue square", "a green star"], size=64, batch=2))
    perturbed = copy.deepcopy(judge.reference)
    weight = perturbed.proj_out.weight
    with torch.no_grad():
        weight.add_(0.05 * weight.std() * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
    q_prefix, q_step = torch_sessions(perturbed)
    _, fp32_step = torch_sessions(judge.reference)

    class Beside:
        def __init__(self):
            self.figures = []

        def run(self, feeds):
            expected = fp32_step.run({**feeds, **self.fp32_cache})["velocity"]
            figures = Comparison.of(q_step.run(feeds)["velocity"], expected)
            self.figures.append((figures.cosine, figures.rel_l2))
            return {"velocity": expected}

    fp32_prefix = torch_sessions(judge.reference)[0]
    beside = Beside()

    class BothPrefixes:
        def run(self, feeds):
            beside.fp32_cache = fp32_prefix.run(feeds)
            return q_prefix.run(feeds)

    sessions = judge._sessions(BothPrefixes(), beside)
    for request in judge.evaluation.requests:
        generate(request, judge.runtime.facts, sessions, check_finite=False)

    class NoDecoding:
        def run(self, feeds):
            raise AssertionError("a replay decoded an image: its figures are the velocities")

    judge.runtime.sessions = judge.runtime.sessions.replacing(vae_decoder=NoDecoding())
    steps = judge.per_step_of(q_prefix, q_step)
    expected = np.array(beside.figures).reshape(len(judge.evaluation.requests), len(steps), 2)
    assert 0.5 < expected[..., 0].min() < 1 - 1e-6  # the perturbation shows
    assert [s["cosine_min"] for s in steps] == pytest.approx(list(expected[..., 0].min(axis=0)), rel=1e-9)
    assert [s["rel_error_mean"] for s in steps] == pytest.approx(list(expected[..., 1].mean(axis=0)), rel=1e-9)
    assert judge.final_velocity_error(perturbed) == pytest.approx(beside.figures[len(steps) - 1][1], rel=1e-9)
    judge.evaluation = Evaluation.on(["a red circle", "a blue square", "a green star"], size=64, batch=2, seed=1)
    with pytest.raises(RuntimeError, match="requests changed since fp32 was recorded"):
        judge.per_step_of(q_prefix, q_step)


def velocity_channels(judge) -> int:
    return judge.runtime.facts.latent_channels


def test_quantize_exports_nothing_of_a_model_that_makes_nan(tiny_dir, tmp_path, monkeypatch):
    """The report is written with the NaN counted; the command fails and no artifacts appear."""
    import torch
    from qiedge.quantization import run

    def poisoned(reference, *args):
        model = fake_quantized(reference, *args)
        with torch.no_grad():
            model.proj_out.weight[0, 0] = float("nan")
        return model

    monkeypatch.setattr(run, "fake_quantized", poisoned)
    prompts = tmp_path / "eval_prompts.txt"
    prompts.write_text("\n".join(prompt_set("held-out", 2)))
    with pytest.raises(ValueError, match=r"the int4 model produced \d+ NaN / Inf values; the report is in"):
        quantize(tiny_dir, Recipe.load("int4"), tmp_path / "art", tmp_path / "report", eval_prompts=str(prompts))
    assert not (tmp_path / "art").exists()
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["accuracy"]["non_finite"] > 0
    assert all(s["non_finite"] > 0 and s["cosine_min"] is None for s in report["accuracy"]["per_step"])
