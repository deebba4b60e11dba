"""ONNX Runtime's int8 MatMul kernels on the CPU at hand: exact, or saturating.

qiedge's INT8 graphs are symmetric s8 x s8 Q/DQ (the layout TensorRT reads). On x86 ONNX Runtime
shifts the activations to u8 and, on CPUs without VNNI, multiplies them with VPMADDUBSW, whose
16-bit pair sums saturate once activations and weights both use most of their range: the demo
transformer's velocity then moves by relative L2 1e-2 and the result depends on the CPU. ONNX
Runtime's documented remedy that keeps the graph is its u8 x u8 kernels, which widen to 16 bits
and sum in 32 (`session.x64quantprecision`; slower than VNNI, faster than fp32). Rather than trust
a feature list, a two-node probe graph (`probes/int8_matmul.onnx`) asks the kernel itself.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

PROBE = Path(__file__).resolve().parent / "probes" / "int8_matmul.onnx"
PROBE_K, PROBE_N = 64, 16
PROBE_SCALE = 0.01  # activations and weights alike: x = 1.27 quantizes to 127, as do the weights
EXACT_KERNELS = {"session.x64quantprecision": "1"}


def probe_is_exact(config: dict[str, str]) -> bool:
    """Does a MatMul of full-range int8 activations and weights come out exact with these session settings?"""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    session = ort.InferenceSession(str(PROBE), options, providers=["CPUExecutionProvider"])
    x = np.full((4, PROBE_K), 127 * PROBE_SCALE, np.float32)
    (y,) = session.run(None, {"x": x})
    return bool(np.allclose(y, PROBE_K * 127 * 127 * PROBE_SCALE**2, rtol=1e-6))


@functools.cache
def saturates() -> bool:
    return not probe_is_exact({})


def session_config(precision: str) -> dict[str, str]:
    """Session settings under which a graph of this precision computes what its recipe says."""
    return EXACT_KERNELS if precision == "int8" and saturates() else {}


def describe() -> str:
    if saturates():
        return "u8s8 kernels saturate here (no VNNI): int8 graphs run on u8u8 kernels (exact)"
    return "u8s8 kernels exact"


def build_probe():
    """The probe graph (needs the `onnx` package; the shipped file is what this writes)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "scale", "zero"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["wd"], axis=1),
        helper.make_node("MatMul", ["xd", "wd"], ["y"]),
    ]
    initializers = [
        numpy_helper.from_array(np.full((PROBE_K, PROBE_N), 127, np.int8), "w"),
        numpy_helper.from_array(np.full(PROBE_N, PROBE_SCALE, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(PROBE_N, np.int8), "w_zero"),
        numpy_helper.from_array(np.array(PROBE_SCALE, np.float32), "scale"),
        numpy_helper.from_array(np.array(0, np.int8), "zero"),
    ]
    graph = helper.make_graph(
        nodes,
        "int8_matmul_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, PROBE_K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, PROBE_N])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], producer_name="qiedge")
