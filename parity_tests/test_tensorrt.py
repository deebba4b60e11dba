"""The tensorrt target: graphs TensorRT reads, proven here without TensorRT.

- every exported graph (fp16, bf16, the INT8 / FP8 / INT4 Q/DQ ones, and the ONNX target's) passes
  the static check against every TensorRT operator table in the repo;
- the checker fails each deliberately broken graph, naming what is wrong;
- the fp16 graphs' numerics, with their fp32 islands, on ONNX Runtime against the reference;
- build_engines.sh's commands read back and compared with the shapes the specs give, for the
  tiny, demo and 7B models;
- the refusals (a precision the device lacks, an unknown TensorRT version, --build without it).
Engine building and the tensorrt backend need TensorRT and a GPU: those tests skip with the reason.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from qiedge.core.artifacts import Artifacts
from qiedge.core.buckets import parse_sizes
from qiedge.core.tokenizer import PromptTokenizer
from qiedge.export import tensorrt_check, tensorrt_memory
from qiedge.export.run import export_artifacts, model_configs
from qiedge.export.specs import SPECS
from qiedge.export.tensorrt import SCRIPT, TensorRTOptions
from qiedge.export.tensorrt_islands import ISLAND_OPS
from qiedge.export.tensorrt_profiles import profile, trtexec_command
from qiedge.parity.checks import case_context, run_parity
from qiedge.quantization.recipe import EncoderWeights, Recipe
from qiedge.quantization.run import quantize
from qiedge.reference_model import presets
from qiedge.reference_model.model_dir import ModelDir, demo_model_dir
from qiedge.runtime.evaluate import prompt_set

VERSIONS = tensorrt_check.versions()
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def qiedge(*args):
    return subprocess.run([sys.executable, "-m", "qiedge.cli", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def trt_fp16(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("trt") / "fp16"
    sizes = "64x64,96x64"  # the parity cases' sizes, so the profiles hold them
    components = "condition_encoder,vision_encoder,transformer_prefix,transformer_step,vae_encoder,vae_decoder"
    result = qiedge(
        "export", "--target", "tensorrt", "--model", str(tiny_dir), "--out", str(out), "--sizes", sizes,
        "--prompt-lengths", "8,64", "--max-batch", "2", "--components", components, "--no-parity",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def trt_quantized(tiny_dir, tmp_path_factory):
    """INT8 / FP8 / INT4 Q/DQ over fp16, every block quantized (the shipped recipes keep the
    tiny model's only two blocks in high precision)."""
    made = {}

    def get(fmt: str) -> Path:
        if fmt not in made:
            root = tmp_path_factory.mktemp(f"trt-{fmt}")
            recipe = Recipe.load(fmt)
            calibration = dataclasses.replace(recipe.calibration_set, count=4, cfg_prompts=1)
            keep = ("img_in", "txt_in.*", "time_text_embed.*", "modulation.*", "norm_out.*", "proj_out")
            recipe = dataclasses.replace(recipe, keep_high_precision=keep, calibration_set=calibration)
            components = ["transformer_prefix", "transformer_step"]
            if fmt == "int4":  # with the condition encoder's weights too (--encoder-weights int4)
                recipe = dataclasses.replace(recipe, encoder=EncoderWeights.named("int4"))
                components.append("condition_encoder")
            prompts = root / "prompts.txt"
            prompts.write_text("\n".join(prompt_set("held-out", 4)))
            quantize(
                tiny_dir, recipe, root / "art", eval_prompts=str(prompts), log=lambda m: None,
                components=components, target="tensorrt",
                target_options={"precision": recipe.format, "device": "hopper"},
            )  # fmt: skip
            made[fmt] = root / "art"
        return made[fmt]

    return get


def _graphs(root: Path) -> list[Path]:
    return sorted(root.rglob("*.onnx"))


def test_tables_name_their_source():
    assert VERSIONS, "no TensorRT operator table in export/tensorrt_support"
    for version in VERSIONS:
        table = tensorrt_check.table(version)
        assert "onnx/onnx-tensorrt docs/operators.md at" in table.source
        assert table.ops["MatMul"].supported and "FP16" in table.ops["MatMul"].types


@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS)
def test_fp16_graphs_pass_every_table(trt_fp16, version):
    graphs = _graphs(trt_fp16)
    assert len(graphs) == 6
    for graph in graphs:
        assert tensorrt_check.check_file(graph, version) == [], graph


QUANTIZED = ["int8", "fp8", "int4", "fp8-attention"]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", QUANTIZED)
def test_quantized_graphs_pass_the_tables_whose_opset_holds_them(trt_quantized, fmt):
    for graph in _graphs(trt_quantized(fmt)):
        model = onnx.load(str(graph), load_external_data=False)
        ops = [n.op_type for n in model.graph.node]
        assert ops.count("DequantizeLinear") > 0
        for version in VERSIONS:
            problems = tensorrt_check.check_file(graph, version)
            low, high = tensorrt_check.table(version).opsets
            opset = next(o.version for o in model.opset_import if o.domain == "")
            assert problems == (
                [] if low <= opset <= high else [f"TensorRT {version}: opset {opset} is outside {low}-{high}"]
            )


@pytest.mark.slow
def test_onnx_target_graphs_pass_unfused_and_fused_ones_are_refused(onnx_fp32, tiny_dir, tmp_path):
    """`--optimize none` writes standard ONNX that TensorRT reads; the default fused graphs hold
    ONNX Runtime's own MultiHeadAttention, which the checker names."""
    from qiedge.export.run import export_artifacts
    from qiedge.reference_model.model_dir import ModelDir

    components = ["transformer_step", "vae_decoder"]
    options = {"optimize": "none"}
    export_artifacts(tmp_path / "art", model=ModelDir.open(tiny_dir), components=components, target_options=options)
    for graph in _graphs(tmp_path / "art"):
        assert tensorrt_check.check_file(graph, VERSIONS[-1]) == [], graph
    fused = tensorrt_check.check_file(onnx_fp32 / "transformer" / "step.onnx", VERSIONS[-1])
    assert fused and any("MultiHeadAttention" in problem for problem in fused)


def test_fp16_graphs_keep_norms_softmax_and_angles_in_fp32(trt_fp16):
    seen = set()
    for graph in _graphs(trt_fp16):
        inferred = onnx.shape_inference.infer_shapes(onnx.load(str(graph), load_external_data=False)).graph
        values = [*inferred.input, *inferred.output, *inferred.value_info]
        types = {v.name: v.type.tensor_type.elem_type for v in values}
        for node in inferred.node:
            if node.op_type in ISLAND_OPS:
                seen.add(node.op_type)
                floats = [types[n] for n in (*node.input[:1], *node.output[:1])]
                assert floats == [TensorProto.FLOAT] * 2, (graph.name, node.name)
    assert {"Softmax", "LayerNormalization", "Pow", "Sin"} <= seen


def test_fp16_graphs_match_the_reference_on_onnx_runtime(trt_fp16, tiny_dir):
    report = run_parity(trt_fp16, tiny_dir)
    assert report["passed"], report["failures"]
    assert report["components"]["transformer_step"]["worst_rel_l2"] < 1e-2
    assert min(c["psnr_db"] for c in report["end_to_end"]["cases"]) >= 50


@pytest.mark.parametrize("fmt", QUANTIZED)
def test_quantized_graphs_on_onnx_runtime(trt_quantized, tiny_dir, fmt):
    report = run_parity(trt_quantized(fmt), tiny_dir, end_to_end=False)
    assert report["passed"], report["failures"]
    manifest = Artifacts.open(trt_quantized(fmt)).manifest
    assert manifest["precision"] == fmt.removesuffix("-attention")
    assert manifest["components"]["transformer_step"]["opset"] >= 19
    encoder = manifest["components"].get("condition_encoder", {}).get("precision")
    assert encoder == ("int4" if fmt == "int4" else None)  # the fixture's int4 has --encoder-weights int4


def test_fp8_attention_is_in_the_pattern_tensorrt_fuses(trt_quantized, tiny_dir):
    """Per block: both attention MatMuls read fp32 casts of FP8 Q/DQ (the probabilities' at
    scale 1, q's and k's after the split softmax scale) and compute in fp32; nothing after the
    second is quantized."""
    graph = onnx.load(str(trt_quantized("fp8-attention") / "transformer" / "step.onnx")).graph
    producer = {o: n for n in graph.node for o in n.output}
    readers = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}

    def dequantized(value):  # the DequantizeLinear behind an fp32 Cast, else None
        cast = producer.get(value)
        dq = producer.get(cast.input[0]) if cast is not None and cast.op_type == "Cast" else None
        return dq if dq is not None and dq.op_type == "DequantizeLinear" else None

    attention = [n for n in graph.node if n.op_type == "MatMul" and all(dequantized(i) for i in n.input)]
    blocks = ModelDir.open(tiny_dir).transformer.num_layers
    assert len(attention) == 2 * blocks
    for first, second in zip(attention[::2], attention[1::2]):
        q, k = (producer[dequantized(i).input[0]] for i in first.input)
        assert producer[q.input[0]].op_type == producer[k.input[0]].op_type == "Mul"  # q, k times sqrt(scale)
        probs_scale = constants[dequantized(second.input[0]).input[1]]
        assert probs_scale.dtype == np.float16 and float(probs_scale) == 1.0
        assert [r.op_type for r in readers[second.output[0]]] == ["Cast"]
        assert all(r.op_type != "QuantizeLinear" for r in readers[readers[second.output[0]][0].output[0]])


# Deliberately broken graphs: each a few nodes, each with one fault the checker must name.
def _model(nodes, inputs, outputs, initializers=(), opset=19):
    graph = helper.make_graph(nodes, "broken", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _tensor(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def _const(name, dtype, values):
    array = np.asarray(values, dtype=helper.tensor_dtype_to_np_dtype(dtype))
    return helper.make_tensor(name, dtype, array.shape, array.ravel().tolist())


def _round_trip(scale, zero, output=TensorProto.FLOAT16, axis: int | None = None):
    """x [4, 8] fp16 through QuantizeLinear and DequantizeLinear with these constants."""
    attributes = {} if axis is None else {"axis": axis}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **attributes),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **attributes),
    ]
    return _model(nodes, [_tensor("x", TensorProto.FLOAT16, [4, 8])], [_tensor("y", output, [4, 8])], [scale, zero])


def _broken() -> dict:
    f16, f32 = TensorProto.FLOAT16, TensorProto.FLOAT
    x16 = _tensor("x", f16, [4, 8])
    y16 = _tensor("y", f16, [4, 8])
    return {
        "unsupported op": (
            _model([helper.make_node("Unique", ["x"], ["y"])], [x16], [_tensor("y", f16, None)]),
            "Unique is not supported",
        ),
        "bool Equal": (
            _model(
                [helper.make_node("Equal", ["a", "b"], ["y"])],
                [_tensor("a", TensorProto.BOOL, [4]), _tensor("b", TensorProto.BOOL, [4])],
                [_tensor("y", TensorProto.BOOL, [4])],
            ),
            "input a is BOOL; Equal takes",
        ),
        "per-channel activation scale": (
            _round_trip(_const("s", f16, [0.1] * 8), _const("z", TensorProto.INT8, [0] * 8), axis=1),
            "activations are quantized per tensor; this scale has 8 values",
        ),
        "fp32 scale on fp16": (
            _round_trip(_const("s", f32, 0.1), _const("z", TensorProto.INT8, 0), output=f32),
            "a FP32 scale on a FP16 tensor",
        ),
        "non-constant Unsqueeze axes": (
            _model(
                [helper.make_node("Unsqueeze", ["x", "axes"], ["y"])],
                [x16, _tensor("axes", TensorProto.INT64, [1])],
                [_tensor("y", f16, None)],
            ),
            "input 1 (axes) must be a build-time constant",
        ),
        "weight scale on the input axis": (
            _model(
                [
                    helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
                    helper.make_node("MatMul", ["x", "wd"], ["y"]),
                ],
                [x16],
                [y16],
                [
                    _const("w", TensorProto.INT8, np.ones((8, 8))),
                    _const("ws", f16, [0.1] * 8),
                    _const("wz", TensorProto.INT8, [0] * 8),
                ],
            ),
            "per-channel scales go on the output-channel axis 1, not 0",
        ),
        "nonzero zero point": (
            _round_trip(_const("s", f16, 0.1), _const("z", TensorProto.INT8, 3)),
            "the zero point must be a constant zero",
        ),
    }


@pytest.mark.parametrize("case", list(_broken()))
@pytest.mark.parametrize("version", VERSIONS)
def test_checker_fails_each_broken_graph(case, version):
    model, expected = _broken()[case]
    problems = tensorrt_check.check_model(model, tensorrt_check.table(version))
    assert any(expected in p for p in problems), problems


def _read_script(text: str) -> list[dict[str, str]]:
    """trtexec's commands from a build script: each as {flag: value} ("" for a bare flag)."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        if line.startswith('"$TRTEXEC"'):
            args = shlex.split(line)[1:]
            commands.append(dict((a.lstrip("-").split("=", 1) + [""])[:2] for a in args))
    return commands


def _shapes(text: str) -> dict[str, list[int]]:
    return {name: [int(d) for d in dims.split("x")] for name, dims in (s.split(":") for s in text.split(","))}


def test_build_script_matches_the_specs_for_tiny(trt_fp16):
    manifest = Artifacts.open(trt_fp16).manifest
    commands = {c["onnx"]: c for c in _read_script((trt_fp16 / SCRIPT).read_text())}
    assert set(commands) == {e["graph"] for e in manifest["components"].values()}
    t = manifest["model"]["transformer"]
    layers, heads, head_dim = t["num_layers"], t["num_attention_heads"], t["attention_head_dim"]
    dropped = PromptTokenizer(Artifacts.open(trt_fp16).facts.tokenizer_json).drop
    step = commands["transformer/step.onnx"]
    for key in ("stronglyTyped", "skipInference"):
        assert key in step
    assert step["saveEngine"] == "transformer/step.plan" and step["builderOptimizationLevel"] == "3"
    # 64x64 and 96x64 images: 16 and 24 latent tokens; prompts of 1..64 tokens, tuned for 8; batch 1..2.
    assert _shapes(step["minShapes"])["latents"] == [1, 16, t["in_channels"]]
    assert _shapes(step["maxShapes"])["latents"] == [2, 24, t["in_channels"]]
    assert _shapes(step["optShapes"])["past_keys"] == [layers, 1, heads, 8, head_dim]
    assert _shapes(step["maxShapes"])["past_values"] == [layers, 2, heads, 64, head_dim]
    assert _shapes(step["maxShapes"])["rope_cos"] == [24, head_dim // 2]
    encoder = commands["condition_encoder/model.onnx"]
    assert _shapes(encoder["maxShapes"])["position_ids"] == [3, 2, 64 + dropped]
    decoder = commands["vae_decoder/model.onnx"]
    assert _shapes(decoder["maxShapes"])["latents"] == [2, t["in_channels"], 4, 6]  # 64 px high, 96 wide
    assert _shapes(decoder["minShapes"])["latents"] == [1, t["in_channels"], 4, 4]


@pytest.mark.parametrize("preset", ["demo", "qwen-image-2-7b"])
def test_build_commands_for_the_demo_and_7b_models(preset):
    """Without exporting their weights: the step's command the target writes, from their configs
    (the step reads no prompt tokens, so the system turn's length does not enter)."""
    if preset == "demo":
        configs = model_configs(ModelDir.open(demo_model_dir()), None)
    else:
        configs = model_configs(None, presets.get_preset(preset))
    options = TensorRTOptions(device="orin", sizes=parse_sizes("512x512,1024x1024"), prompt_lengths=(128, 512))
    shapes = profile(SPECS["transformer_step"], configs, options.ranges.dims(dropped=0))
    step = trtexec_command("transformer/step.onnx", "transformer/step.plan", shapes, options.settings)
    t = configs.transformer
    flags = _read_script("\n".join(['"$TRTEXEC" ' + " ".join(shlex.quote(a) for a in step[1:])]))[0]
    # 512x512 to 1024x1024: 1,024 to 4,096 image tokens of 16x16 px.
    assert _shapes(flags["minShapes"])["latents"] == [1, 1024, t.in_channels]
    assert _shapes(flags["maxShapes"])["latents"] == [1, 4096, t.in_channels]
    assert _shapes(flags["maxShapes"])["past_keys"] == [
        t.num_layers,
        1,
        t.num_attention_heads,
        512,
        t.attention_head_dim,
    ]
    assert flags["memPoolSize"] == "workspace:2048"  # Orin's, whose GPU shares the system memory
    if preset == "qwen-image-2-7b":
        assert (t.num_layers, t.num_attention_heads, t.attention_head_dim, t.in_channels) == (32, 32, 128, 64)


def test_cli_check_passes_exported_artifacts(trt_fp16):
    result = qiedge("check", str(trt_fp16))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(" ok") == 6


def test_cli_refuses_fp8_on_orin(tiny_dir, tmp_path):
    result = qiedge(
        "export", "--target", "tensorrt", "--precision", "fp8", "--device", "orin", "--model", str(tiny_dir),
        "--out", str(tmp_path / "x"),
    )  # fmt: skip
    assert result.returncode == 2
    assert "Jetson Orin (Ampere) cannot run fp8" in result.stderr and "choose fp16, bf16, int8, int4" in result.stderr
    assert not (tmp_path / "x").exists()


def test_cli_refuses_an_unknown_tensorrt_version(tiny_dir, tmp_path):
    result = qiedge(
        "export", "--target", "tensorrt", "--trt", "9.9", "--model", str(tiny_dir), "--out", str(tmp_path / "x")
    )
    assert result.returncode == 2 and "no TensorRT 9.9 operator table; known:" in result.stderr


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt imports here: --build runs")
def test_build_without_tensorrt_is_refused_before_any_work(tiny_dir, tmp_path):
    result = qiedge("export", "--target", "tensorrt", "--build", "--model", str(tiny_dir), "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "run the build_engines.sh" in result.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_bf16_graphs_pass_the_check(tiny_dir, tmp_path):
    out = tmp_path / "bf16"
    export_artifacts(
        out, "tensorrt", "bf16", model=ModelDir.open(tiny_dir), components=["transformer_step"],
        target_options={"precision": "bf16"},
    )  # fmt: skip
    graph = out / "transformer" / "step.onnx"
    model = onnx.load(str(graph), load_external_data=False)
    assert {i.type.tensor_type.elem_type for i in model.graph.input if i.name == "latents"} == {TensorProto.BFLOAT16}
    for version in VERSIONS:
        assert tensorrt_check.check_file(graph, version) == []


@pytest.mark.skipif(not HAS_TENSORRT, reason="TensorRT is not installable here (its PyPI packages fetch from NVIDIA)")
def test_engines_build_and_match_onnx_runtime(trt_fp16, tiny_dir, tmp_path):
    from qiedge.runtime.backends.onnx_runtime import OnnxRuntimeBackend
    from qiedge.runtime.backends.tensorrt import TensorRTBackend

    out = tmp_path / "built"
    result = qiedge(
        "export", "--target", "tensorrt", "--build", "--model", str(tiny_dir), "--out", str(out), "--sizes", "64x64",
        "--prompt-lengths", "8,64", "--no-parity",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    artifacts = Artifacts.open(out)
    trt, ort = TensorRTBackend(artifacts), OnnxRuntimeBackend(artifacts)
    report = run_parity(out, tiny_dir, end_to_end=False)
    assert report["passed"]
    _, feeds = next(iter(SPECS["transformer_prefix"].cases(case_context(artifacts, ModelDir.open(tiny_dir)))))
    ours, theirs = trt.load("transformer_prefix").run(feeds), ort.load("transformer_prefix").run(feeds)
    for key, value in theirs.items():
        assert np.allclose(trt.arrays.get(ours[key]), value, atol=1e-2)


def test_activation_peak_counts_the_tensors_alive_at_once(tmp_path):
    """x -> a -> b, y = a + b, at x of 4x8 fp32 (128 bytes each): x dies after its Relu, a lives
    until the Add, so the peak is a, b and y together. The weight w is not an activation."""
    f32 = TensorProto.FLOAT
    nodes = [
        helper.make_node("Mul", ["x", "w"], ["x2"]),
        helper.make_node("Relu", ["x2"], ["a"]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["y"]),
    ]
    model = _model(nodes, [_tensor("x", f32, ["n", 8])], [_tensor("y", f32, ["n", 8])], [_const("w", f32, [2.0] * 8)])
    onnx.save(model, tmp_path / "g.onnx")
    assert tensorrt_memory.activation_peak(tmp_path / "g.onnx", {"x": [4, 8]}) == (3 * 128, 0)
    assert tensorrt_memory.activation_peak(tmp_path / "g.onnx", {"x": [40, 8]}) == (3 * 1280, 0)


def test_memory_plan_verdicts():
    gb = 1 << 30
    needs = {"encoder": tensorrt_memory.Need(4 * gb, gb, 0), "transformer": tensorrt_memory.Need(6 * gb, 2 * gb, 0)}
    system = tensorrt_memory.SYSTEM_BYTES
    # Everything at once: 4 + 6 GB of weights, the larger activation peak, one workspace.
    fits = tensorrt_memory.plan(needs, 13 * gb + system, gb)
    assert fits["all_resident"] == 13 * gb and fits["verdict"] == "all resident"
    in_turn = tensorrt_memory.plan(needs, 12 * gb + system, gb)["verdict"]
    assert in_turn == "one after another: encoder, then transformer"
    assert tensorrt_memory.plan(needs, 9 * gb + system, gb)["verdict"].startswith("one after another")
    short = tensorrt_memory.plan(needs, 8 * gb + system, gb)["verdict"]
    assert short == "does not fit: transformer alone needs more"
    # A decoder that alone does not fit is told about tiles, unless it is already tiled.
    plans = [tensorrt_memory.plan({"vae_decoder": tensorrt_memory.Need(gb, m * gb, 0)}, 16 * gb, gb) for m in (16, 4)]
    assert tensorrt_memory.advice(plans, tiled=False) == [
        "the VAE decoder alone does not fit 16 GB at these sizes: export it with --vae-tile 512 (or another tile) "
        "and its engine plans one tile's activations"
    ]
    assert tensorrt_memory.advice(plans, tiled=True) == tensorrt_memory.advice(plans[1:], tiled=False) == []


def test_cli_memory_plan_of_exported_graphs(trt_fp16, trt_quantized):
    result = qiedge("inspect", "--target", "tensorrt", "--artifacts", str(trt_fp16), "--device", "orin", "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    artifacts = Artifacts.open(trt_fp16)
    weights = sum(
        (trt_fp16 / f).stat().st_size
        for f in {f for c in ("transformer_prefix", "transformer_step") for f in artifacts.component(c)["files"]}
        if not f.endswith(".onnx")
    )
    inline = sum(tensorrt_memory.inline_bytes(artifacts.verify(c)) for c in ("transformer_prefix", "transformer_step"))
    assert payload["needs"]["transformer"]["weights"] == weights + inline and 0 < inline < weights / 100
    assert all(n["activations"] > 0 for n in payload["needs"].values())
    # Every tensor sized, but the encoder's few position ranges ONNX's inference cannot follow.
    assert payload["needs"]["transformer"]["unresolved"] == payload["needs"]["vae_decoder"]["unresolved"] == 0
    assert [p["memory"] >> 30 for p in payload["plans"]] == [16, 32, 64]
    # A tiny model fits anything, and needs no advice.
    assert all(p["verdict"] == "all resident" for p in payload["plans"]) and payload["advice"] == []
    # Orin has no FP8; the shipped recipes keep the first and last blocks, all the tiny model has.
    estimates = [(e["precision"], e["quantized_weights"], e["encoder_int4"]) for e in payload["estimates"]]
    assert estimates == [(p, 0, encoder) for p in ("int8", "int4") for encoder in (False, True)]
    # --encoder-weights int4: the estimate is what the encoder's INT4 graph weighs, its scales included.
    fp16, int4 = (payload["estimates"][i]["weights"]["condition_encoder"] for i in (0, 1))
    assert fp16 == payload["needs"]["condition_encoder"]["weights"]
    assert int4 == tensorrt_memory.needs(Artifacts.open(trt_quantized("int4")))["condition_encoder"].weights < fp16


def test_requantized_weights():
    need = tensorrt_memory.Need(weights=10_000, activations=5, unresolved=0)
    assert tensorrt_memory.requantized(need, 1_000, 8).weights == 10_000 - 1_000  # 2 bytes -> 1
    # int4 with an fp16 scale per 128 weights: 4.125 bits, 1,484 of 2,000 bytes saved.
    assert tensorrt_memory.requantized(need, 1_000, 4 + 16 / 128).weights == 10_000 - 1_484


def test_generate_from_tensorrt_artifacts(trt_fp16, tmp_path):
    """Where TensorRT is not, auto runs the same graphs on ONNX Runtime and says so."""
    out = tmp_path / "img.png"
    result = qiedge("generate", "a red circle", "--artifacts", str(trt_fp16), "--width", "64", "--height", "64",
                    "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "onnxruntime" in result.stderr.splitlines()[0] and out.is_file()
    if not HAS_TENSORRT:
        forced = qiedge("generate", "a", "--artifacts", str(trt_fp16), "--backend", "tensorrt", "--width", "64",
                        "--height", "64", "--out", str(tmp_path / "b.png"))  # fmt: skip
        assert forced.returncode == 2 and "tensorrt" in forced.stderr and "Traceback" not in forced.stderr
        assert not (tmp_path / "b.png").exists()


def test_static_profiles_fix_every_dim():
    configs = model_configs(ModelDir.open(demo_model_dir()), None)
    options = TensorRTOptions(sizes=parse_sizes("768x1024"), prompt_lengths=(256,), max_batch=2, static=True)
    options.check()
    shapes = profile(SPECS["transformer_step"], configs, options.ranges.dims(dropped=0))
    assert all(s["min"] == s["opt"] == s["max"] for s in shapes.values())
    t = configs.transformer
    assert shapes["latents"]["min"] == [2, 48 * 64, t.in_channels]  # 1024 / 16 rows of 768 / 16
    assert shapes["past_keys"]["max"] == [t.num_layers, 2, t.num_attention_heads, 256, t.attention_head_dim]
    with pytest.raises(ValueError, match="one size and one prompt length"):
        dataclasses.replace(options, prompt_lengths=(128, 256)).check()


def test_vae_tiles_bound_the_decoder_profile():
    """--vae-tile: the decoder's engine takes its tiles' shapes, up to one whole tile, while the
    transformer's still takes the whole image."""
    configs = model_configs(None, presets.get_preset("qwen-image-2-7b"))
    options = TensorRTOptions(sizes=parse_sizes("1024x1024,2048x2048"), vae_tile=512)
    options.check()

    def latents(component):
        spec = SPECS[component]
        return profile(spec, configs, options.ranges_for(spec).dims(dropped=0))["latents"]

    # Up to a 512 px tile (32 latents); down to one latent, the edge of some size between the two
    # (1568 px: 98 latents, the last tile starting at 96).
    assert latents("vae_decoder") == {"min": [1, 64, 1, 1], "opt": [1, 64, 32, 32], "max": [1, 64, 32, 32]}
    assert latents("transformer_step")["max"] == [1, 128 * 128, 64]
    with pytest.raises(ValueError, match="a static engine takes one"):
        dataclasses.replace(options, sizes=parse_sizes("2048x2048"), prompt_lengths=(128,), static=True).check()


class Noted:
    """A graph's session that notes the shapes it runs at."""

    def __init__(self, session, calls: list):
        self.session, self.calls = session, calls

    def run(self, feeds):
        self.calls.append({n: tuple(v.shape) for n, v in feeds.items()})
        return self.session.run(feeds)


def test_static_engines_take_shorter_prompts_and_smaller_batches(trt_fp16, tiny_dir):
    """The tensorrt backend's session over a static engine (runtime/backends/tensorrt.py), here
    around ONNX Runtime sessions of the same graphs given a static profile (64x64, prompts of 40
    tokens, batches of 2): a one-image request with a short prompt, padded into that shape, draws
    the image the graphs draw unpadded."""
    from qiedge.core.metrics import psnr
    from qiedge.runtime.arrays import HOST
    from qiedge.runtime.backends.onnx_runtime import OnnxRuntimeBackend
    from qiedge.runtime.backends.tensorrt import static_session
    from qiedge.runtime.bucketed import BucketError
    from qiedge.runtime.sampler import GraphPromptEncoder, Request, Sessions, generate

    artifacts = Artifacts.open(trt_fp16)
    tokenizer = PromptTokenizer(artifacts.facts.tokenizer_json)
    configs = model_configs(ModelDir.open(tiny_dir), None)
    ranges = TensorRTOptions(sizes=parse_sizes("64x64"), prompt_lengths=(40,), max_batch=2, static=True).ranges
    backend, calls = OnnxRuntimeBackend(artifacts), []

    def padded(component):
        fixed = profile(SPECS[component], configs, ranges.dims(tokenizer.drop))
        entry = {**artifacts.component(component), "profile": fixed, "static": True}
        return static_session(component, entry, Noted(backend.load(component), calls), HOST, "64x64_t40")

    request = Request(["a red circle"], width=64, height=64, seed=5)
    plain = Sessions(backend.prompt_encoder(artifacts.facts), backend.load)
    static = Sessions(GraphPromptEncoder(tokenizer, padded("condition_encoder"), artifacts.facts.vision, None), padded)
    expected = generate(request, artifacts.facts, plain)
    # Padded keys weigh exactly zero: equal images here (PSNR inf), kernels' sums may order differently elsewhere.
    assert psnr(generate(request, artifacts.facts, static), expected, peak=1.0) >= 60
    # Every graph ran at the one shape: two items, 40 prompt tokens (the encoder's with its system turn).
    assert {call["key_valid"] for call in calls if "key_valid" in call} == {(2, 40)}
    assert {call["attention_mask"] for call in calls if "attention_mask" in call} == {(2, 40 + tokenizer.drop)}
    assert {call["latents"][0] for call in calls if "latents" in call} == {2}
    with pytest.raises(BucketError, match="a prompt of 41 tokens has no bucket; exported: 64x64_t40"):
        padded("transformer_prefix").run({"key_valid": np.ones((1, 41), bool)})


def test_a_dynamic_engine_runs_a_larger_batch_in_parts(trt_fp16, tiny_dir):
    """The tensorrt backend's session over a dynamic engine built for --max-batch 1, here around
    ONNX Runtime sessions of the same graphs: a two-image request runs as one-item calls and draws
    the images the graphs draw in one batch; the vision tower, one image by its contract, runs as is."""
    from qiedge.core.metrics import psnr
    from qiedge.runtime.arrays import HOST
    from qiedge.runtime.backends.onnx_runtime import OnnxRuntimeBackend
    from qiedge.runtime.bucketed import PartedSession
    from qiedge.runtime.sampler import GraphPromptEncoder, Request, Sessions, generate

    artifacts = Artifacts.open(trt_fp16)
    backend, calls = OnnxRuntimeBackend(artifacts), []

    def parted(component):
        return PartedSession(component, artifacts.component(component), Noted(backend.load(component), calls), 1, HOST)

    tokenizer = PromptTokenizer(artifacts.facts.tokenizer_json)
    request = Request(["a red circle", "a small blue square on the right"], width=64, height=64, seed=5)
    plain = Sessions(backend.prompt_encoder(artifacts.facts), backend.load)
    parts = Sessions(GraphPromptEncoder(tokenizer, parted("condition_encoder"), artifacts.facts.vision, None), parted)
    expected = generate(request, artifacts.facts, plain)
    assert expected.shape[0] == 2 and psnr(generate(request, artifacts.facts, parts), expected, peak=1.0) >= 60
    batches = {shape[0] for call in calls for name, shape in call.items() if name in ("input_ids", "latents")}
    assert batches == {1} and len(calls) > 0
    _, feeds = next(iter(SPECS["vision_encoder"].cases(case_context(artifacts, ModelDir.open(tiny_dir)))))
    expected = backend.load("vision_encoder").run(feeds)
    assert all(np.array_equal(v, expected[n]) for n, v in parted("vision_encoder").run(feeds).items())
