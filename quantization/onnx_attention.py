"""FP8 attention in the ONNX pattern TensorRT fuses into one FP8 attention kernel:

    q * sqrt(1/sqrt(d)) -> Q/DQ(s_q) -> Cast fp32 --+
                                                    MatMul -> Cast -> + mask -> Softmax -> [NaN guard]
    k^T * sqrt(1/sqrt(d)) -> Q/DQ(s_k) -> Cast fp32 -+                                        |
                                                         Q/DQ(1.0) -> Cast fp32 --+           |
                                                                                  MatMul -> Cast
                                                v -> Q/DQ(s_v) -> Cast fp32 ------+

The exporter already splits the softmax scale between q and k (the two Muls); the scales are
calibrated on exactly those operands. The probabilities, in [0, 1], are quantized at scale 1;
nothing is quantized after the second MatMul (the output projection's own Q/DQ follows, if it
is quantized). In fp32 graphs (the onnx target) the casts are left out. Each attention is matched
to its block by the output projection it feeds (`transformer_blocks.<i>.attn.to_out.0`): the
prefix graph has no attention in the last block, whose output nothing reads.
"""

from __future__ import annotations

import functools
import re

import numpy as np
from qiedge.export.stages import Pass
from qiedge.export.tensorrt_islands import narrowed

from .onnx_qdq import _constant, _zero_point, is_transformer

BLOCK = "transformer_blocks.{}.attn"
TO_OUT = re.compile(r"transformer_blocks\.(\d+)\.attn\.to_out\.0\.weight$")
_UPSTREAM = ("Add", "Cast")  # between the first MatMul and the Softmax: the mask, the fp32 island
_DOWNSTREAM = ("Cast", "Where")  # between the Softmax and the second MatMul: the island, the NaN guard


class AttentionQdq:
    def __init__(self, scales: dict[str, tuple[float, float, float]]):
        self.scales = scales  # attention module name -> FP8 scales of q, k, v

    def as_pass(self) -> Pass:
        entry = {"attention": {"format": "fp8", "blocks": len(self.scales)}}
        return Pass("FP8 attention", self._insert_pass, applies_to=is_transformer, entry=entry)

    def _insert_pass(self, job) -> None:
        import torch

        fp8_attention(job.graph, self.scales, torch.empty(0, dtype=job.precision).numpy().dtype)


def fp8_attention(model, scales: dict[str, tuple[float, float, float]], float_dtype=np.float32) -> int:
    """Rewrite each planned block's attention in `model` (onnx_ir) into the FP8 pattern; returns how many."""
    planned = {int(name.split(".")[1]): s for name, s in scales.items()}
    done = 0
    for softmax in [node for node in model.graph if node.op_type == "Softmax"]:
        first, second = _upstream_matmul(softmax), _downstream_matmul(softmax)
        block = _block_of(second)
        if block not in planned:
            continue
        q_scale, k_scale, v_scale = planned[block]
        fp8 = functools.partial(_fp8, model.graph, BLOCK.format(block), float_dtype)
        first.replace_input_with(0, fp8(first.inputs[0], "q", q_scale, first))
        first.replace_input_with(1, fp8(first.inputs[1], "k", k_scale, first))
        second.replace_input_with(0, fp8(second.inputs[0], "probs", 1.0, second))
        second.replace_input_with(1, fp8(second.inputs[1], "v", v_scale, second))
        if float_dtype != np.float32:  # both MatMuls now compute in fp32: cast back for their readers
            narrowed(model.graph, first, first.outputs[0])
            narrowed(model.graph, second, second.outputs[0])
        done += 1
    if planned and not done:
        raise ValueError("no attention of the planned blocks in this graph")
    return done


def _upstream_matmul(softmax):
    def search(value):
        node = value.producer() if value is not None else None
        if node is None or node.op_type not in ("MatMul", *_UPSTREAM):
            return None
        return node if node.op_type == "MatMul" else next(filter(None, map(search, node.inputs)), None)

    found = search(softmax.inputs[0])
    if found is None:
        raise ValueError(f"{softmax.name}: no MatMul of q and k before it")
    return found


def _downstream_matmul(softmax):
    value = softmax.outputs[0]
    while True:
        uses = [u for u in value.uses() if u.node.op_type != "IsNaN"]
        if len(uses) != 1:
            break
        node = uses[0].node
        if node.op_type == "MatMul" and uses[0].idx == 0:
            return node
        if node.op_type not in _DOWNSTREAM:
            break
        value = node.outputs[0]
    raise ValueError(f"{softmax.name}: no MatMul of the probabilities and v after it")


def _block_of(matmul) -> int:
    """The block whose output projection reads this attention's output."""
    value = matmul.outputs[0]
    while len(uses := list(value.uses())) == 1 and uses[0].node.op_type != "MatMul":
        value = uses[0].node.outputs[0]
    weight = uses[0].node.inputs[1] if len(uses) == 1 else None
    while weight is not None and weight.producer() is not None:  # through the weight's DequantizeLinear
        weight = weight.producer().inputs[0]
    match = TO_OUT.search(weight.name or "") if weight is not None else None
    if match is None:
        raise ValueError(f"{matmul.name}: its output reaches no attention output projection")
    return int(match.group(1))


def _fp8(graph, name: str, float_dtype, value, label: str, scale: float, before):
    """`value` through FP8 Q/DQ at `scale` (in the value's float type), then cast to fp32."""
    import onnx_ir as ir

    dtype = value.dtype
    scale_value = _constant(graph, name, f"{label}_scale", np.array(scale, dtype.numpy()))
    zero = _constant(graph, name, f"{label}_zero_point", _zero_point("fp8"))
    quantize = ir.node("QuantizeLinear", [value, scale_value, zero])
    dequantize = ir.node("DequantizeLinear", [quantize.outputs[0], scale_value, zero])
    quantize.outputs[0].dtype, dequantize.outputs[0].dtype = ir.DataType.FLOAT8E4M3FN, dtype
    quantize.outputs[0].shape = dequantize.outputs[0].shape = value.shape
    nodes = [quantize, dequantize]
    if float_dtype != np.float32:
        nodes.append(ir.node("Cast", [dequantize.outputs[0]], attributes={"to": ir.DataType.FLOAT}))
        nodes[-1].outputs[0].dtype, nodes[-1].outputs[0].shape = ir.DataType.FLOAT, value.shape
    graph.insert_before(before, nodes)
    return nodes[-1].outputs[0]
