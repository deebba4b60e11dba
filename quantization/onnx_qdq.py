"""Explicit Q/DQ ONNX graphs of the transformer, in the layout TensorRT's explicit quantization
reads (and ONNX Runtime's CPU provider runs):

    x -> [Mul 1/s] -> QuantizeLinear(a_scale) -> DequantizeLinear(a_scale) -> MatMul
    W (int8 / float8e4m3fn, stored quantized) -> DequantizeLinear(w_scale, axis=1) -^

Dynamic INT8 (ONNX Runtime only) quantizes the activations at run time instead: see
`_dynamic_matmul`. Weight-only INT4 keeps the activations in float and dequantizes blocks of G input channels
(opset 21's blocked DequantizeLinear); weight-only INT8 (the condition encoder's) dequantizes per
output channel. Weights are quantized tensor by tensor while they stream
into the external-data file (the export pass's weight hook), their scales computed from the
tensor right there, so the 7B graph never needs the model in memory.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from qiedge.export.stages import Pass

from .scales import LayerQuant


def _numpy(q: torch.Tensor, fmt: str) -> np.ndarray:
    import ml_dtypes

    if fmt == "fp8":
        return q.view(torch.uint8).numpy().view(ml_dtypes.float8_e4m3fn)
    if fmt == "int4":
        return q.numpy().astype(ml_dtypes.int4)  # packed two to a byte when written
    return q.numpy()


QDQ_OPSET = {"int8": 19, "fp8": 19, "int4": 21}  # fp16 and float8 Q/DQ types need opset 19, blocked int4 DQ 21


def is_transformer(spec) -> bool:
    return spec.weights == "transformer"


def is_condition_encoder(spec) -> bool:
    return spec.name == "condition_encoder"


class QdqPlan:
    """Which checkpoint weights of the graphs it applies to are quantized, and how; the weight
    scales, recorded as each weight streams through `for_key`, are what `insert_qdq` writes beside it."""

    def __init__(self, quants: dict[str, LayerQuant], fmt: str, applies_to=is_transformer):
        self.quants = {f"{name}.weight": q for name, q in quants.items()}
        self.fmt, self.applies_to = fmt, applies_to
        self.weight_scales: dict[str, np.ndarray] = {}

    @property
    def opset(self) -> int:
        return QDQ_OPSET[self.fmt]

    def for_key(self, key: str):
        """For a planned key, the function from its fp32 [out, in] weight to the quantized one."""
        quant = self.quants.get(key)
        if quant is None:
            return None

        def quantize(array: np.ndarray) -> np.ndarray:
            quantized = quant.quantize(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)), self.fmt)
            self.weight_scales[key] = quantized.scale
            return _numpy(quantized.values, self.fmt)

        return quantize

    def as_pass(self, record: dict) -> Pass:
        """The export pass: quantize the planned weights as they stream, put Q/DQ around their
        MatMuls, and record the format, opset, recipe and scales in the manifest."""
        entry = {
            "precision": self.fmt,
            "opset": self.opset,
            "quantization": {
                "format": self.fmt,
                "scales_hash": record["scales_hash"],
                "recipe": record["recipe"]["name"],
            },
        }
        return Pass("insert Q/DQ", self._insert_pass, applies_to=self.applies_to, weights=self.for_key, entry=entry)

    def _insert_pass(self, job) -> None:
        if not insert_qdq(job.graph, job.spec.key_prefix, self, torch.empty(0, dtype=job.precision).numpy().dtype):
            raise ValueError("no planned layer feeds a MatMul in this graph")


def _zero_point(fmt: str):
    if fmt == "int8":
        return np.array(0, dtype=np.int8)
    import ml_dtypes

    return np.array(0, dtype=ml_dtypes.float8_e4m3fn)


def _constant(graph, name: str, suffix: str, value: np.ndarray):
    """A new initializer `name.suffix` in the graph."""
    import onnx_ir as ir

    v = ir.Value(name=f"{name}.{suffix}", const_value=ir.tensor(value, name=f"{name}.{suffix}"))
    graph.register_initializer(v)
    return v


def insert_qdq(model, key_prefix: str, plan: QdqPlan, float_dtype=np.float32) -> int:
    """Put Q/DQ around every MatMul whose weight the plan quantized; returns how many.

    Scales are in the graph's float type (`float_dtype`), as Q/DQ require.
    """
    import onnx_ir as ir

    graph = model.graph
    count = 0
    for name, weight in list(graph.initializers.items()):
        key = name.removeprefix(key_prefix)
        quant = plan.quants.get(key)
        if quant is None:
            continue
        weight_scale = plan.weight_scales[key]
        uses = list(weight.uses())
        if len(uses) != 1 or uses[0].node.op_type != "MatMul" or uses[0].idx != 1:
            raise ValueError(f"{name}: expected to feed one MatMul's weight input")
        matmul = uses[0].node
        const = functools.partial(_constant, graph, name)

        if quant.dynamic:
            if float_dtype != np.float32:
                raise ValueError("dynamic int8 graphs are fp32 (DynamicQuantizeLinear reads float32)")
            _dynamic_matmul(graph, matmul, weight, weight_scale, const)
            count += 1
            continue
        w_dq = _weight_dq(weight, weight_scale, quant, plan.fmt, float_dtype, const)
        if quant.act_scale is None:  # weight-only: the activations stay in float
            graph.insert_before(matmul, [w_dq])
            matmul.replace_input_with(1, w_dq.outputs[0])
            count += 1
            continue
        zp = _zero_point(plan.fmt)
        nodes = [w_dq]
        x = matmul.inputs[0]
        if quant.smooth is not None:
            nodes.append(ir.node("Mul", [x, const("inv_smooth", (1 / quant.smooth).astype(float_dtype))]))
            x = nodes[-1].outputs[0]
        a_scale, a_zp = const("a_scale", np.array(quant.act_scale, float_dtype)), const("a_zero_point", zp)
        nodes.append(ir.node("QuantizeLinear", [x, a_scale, a_zp]))
        nodes.append(ir.node("DequantizeLinear", [nodes[-1].outputs[0], a_scale, a_zp]))
        graph.insert_before(matmul, nodes)
        matmul.replace_input_with(0, nodes[-1].outputs[0])
        matmul.replace_input_with(1, w_dq.outputs[0])
        count += 1
    model.opset_imports[""] = plan.opset
    return count


def _weight_dq(weight, weight_scale: np.ndarray, quant: LayerQuant, fmt: str, float_dtype, const):
    """The DequantizeLinear of a stored [in, out] weight: blocks of G input channels (axis 0)
    sharing a scale (INT4), or a scale per output channel (axis 1) or per tensor."""
    import onnx_ir as ir

    if quant.group:
        scale = const("w_scale", weight_scale.T.astype(float_dtype).copy())
        return ir.node("DequantizeLinear", [weight, scale], attributes={"axis": 0, "block_size": quant.group})
    zp = _zero_point(fmt)
    w_scale = weight_scale.astype(float_dtype)
    if quant.granularity == "per-channel":
        scale, zero = const("w_scale", w_scale), const("w_zero_point", np.zeros(weight_scale.size, zp.dtype))
        return ir.node("DequantizeLinear", [weight, scale, zero], attributes={"axis": 1})
    return ir.node("DequantizeLinear", [weight, const("w_scale", w_scale[0]), const("w_zero_point", zp)])


def _dynamic_matmul(graph, matmul, weight, weight_scale: np.ndarray, const) -> None:
    """Replace MatMul(x, W) by ONNX Runtime's dynamic int8 pattern, which it fuses into one
    DynamicQuantizeMatMul: x quantized to uint8 over its own range at run time, a uint8 x int8
    MatMulInteger, the int32 sums scaled back by the activation's and the weight's scales."""
    import onnx_ir as ir

    quantize = ir.node("DynamicQuantizeLinear", [matmul.inputs[0]], num_outputs=3)
    x_q, x_scale, x_zero = quantize.outputs
    sums = ir.node("MatMulInteger", [x_q, weight, x_zero])
    widened = ir.node("Cast", [sums.outputs[0]], attributes={"to": ir.DataType.FLOAT})
    scales = ir.node("Mul", [x_scale, const("w_scale", weight_scale.astype(np.float32))])
    scaled = ir.node("Mul", [widened.outputs[0], scales.outputs[0]])
    graph.insert_before(matmul, [quantize, sums, widened, scales, scaled])
    matmul.outputs[0].replace_all_uses_with(scaled.outputs[0])
    graph.remove(matmul, safe=True)
