"""The dynamic INT8 recipe's fake-quant arithmetic is ONNX Runtime's: DynamicQuantizeLinear's
uint8 range, scale and zero point, and the fused DynamicQuantizeMatMul it runs in the graphs."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402
from qiedge.quantization.recipe import Recipe  # noqa: E402
from qiedge.quantization.scales import dynamic_fake_quant  # noqa: E402


def _session(nodes, initializers=(), config=None):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])],
        list(initializers),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    options = ort.SessionOptions()
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _tensors(rng):
    """Mixed signs with an outlier, all positive, all negative, all zero, one value."""
    mixed = rng.standard_normal((16, 64)).astype(np.float32)
    mixed[3, 5] = 40.0
    yield mixed
    yield np.abs(mixed) + 0.5
    yield -np.abs(mixed) - 0.5
    yield np.zeros((4, 8), np.float32)
    yield np.full((1, 1), 3.25, np.float32)


def test_fake_quant_is_onnx_runtimes_dynamic_quantize_linear():
    session = _session(
        [
            helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "scale", "zero"]),
            helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"]),
        ]
    )
    for x in _tensors(np.random.default_rng(0)):
        (expected,) = session.run(None, {"x": x})
        np.testing.assert_array_equal(dynamic_fake_quant(torch.from_numpy(x)).numpy(), expected)


def test_fused_int8_matmul_computes_the_fake_quant_product():
    """What the graphs hold for a dynamic layer (quantization/onnx_qdq.py), fused by ONNX Runtime,
    on kernels that are exact on this CPU (runtime/ort_int8.py)."""
    from qiedge.runtime import ort_int8

    rng = np.random.default_rng(1)
    weight = rng.integers(-127, 128, (64, 32)).astype(np.int8)
    w_scale = (rng.random(32) * 0.01 + 1e-3).astype(np.float32)
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "scale", "zero"]),
        helper.make_node("MatMulInteger", ["q", "w", "zero"], ["sums"]),
        helper.make_node("Cast", ["sums"], ["wide"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["scale", "w_scale"], ["scales"]),
        helper.make_node("Mul", ["wide", "scales"], ["y"]),
    ]
    initializers = [onnx.numpy_helper.from_array(weight, "w"), onnx.numpy_helper.from_array(w_scale, "w_scale")]
    session = _session(nodes, initializers, ort_int8.session_config("int8"))
    dequantized = torch.from_numpy(weight.astype(np.float32) * w_scale)
    for x in _tensors(rng):
        if x.shape[1] != 64:
            continue
        (actual,) = session.run(None, {"x": x})
        expected = dynamic_fake_quant(torch.from_numpy(x)) @ dequantized
        np.testing.assert_allclose(actual, expected.numpy(), rtol=1e-5, atol=1e-5 * np.abs(expected.numpy()).max())


def test_dynamic_recipe_needs_no_calibration_and_only_int8():
    recipe = Recipe.load("int8-dynamic")
    assert (recipe.format, recipe.activations, recipe.calibrated) == ("int8", "dynamic", False)
    with pytest.raises(ValueError, match="dynamic activations are int8"):
        Recipe(name="x", format="fp8", activations="dynamic")
    with pytest.raises(ValueError, match="dynamic activations are int8"):
        Recipe(name="x", format="int8", activations="dynamic", smoothquant_alpha=0.5)
