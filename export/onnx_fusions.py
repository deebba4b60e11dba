"""ONNX Runtime's fused operators in exported graphs (`qiedge export --target onnx --optimize`).

The exporter writes `scaled_dot_product_attention` as its parts:

    q [B,N,S,H] * c_q --------------------------------+
    k [B,N,L,H] -> Reshape/Transpose/Reshape -> * c_k -+- MatMul -> [+ bias] -> Softmax -> [NaN guard] -> MatMul -> o
                                                          v [B,N,L,H] ------------------------------------^

and each becomes one `com.microsoft.MultiHeadAttention` on [B, S, N*H] operands, its scale c_q * c_k.
ONNX Runtime's CPU kernel runs flash attention (no [B, N, S, L] score tensor) only when the node
has no mask and no bias, so an attention masked by key padding ([B, 1, 1, L], the cached step's
`key_valid`) becomes an `If` on "every key valid": the flash node when nothing is padded (one
prompt, or prompts of one length), the masked node otherwise. Any other bias (the prefix's
block-causal mask) is passed as the node's attention bias. The NaN guard is dropped: it zeroes
rows whose keys are all masked, and no query here has none (each sees itself).

RMSNorm: the exporter writes `x * rsqrt(mean(x^2) + eps)` as `x * Reciprocal(Sqrt(...))`, which
ONNX Runtime's SimplifiedLayerNormalization fusion does not read; as `x / Sqrt(...)` (standard
ONNX, the same value to an ulp) it does, when a session loads. ONNX Runtime fuses the rest it
recognizes there too (SiLU, LayerNorm with a residual add, scaled MatMuls, int8 and int4 matmuls);
RoPE stays elementwise.
"""

from __future__ import annotations

import numpy as np

LEVELS = ("cpu", "gpu", "none")
MS_DOMAIN = "com.microsoft"
# ONNX Runtime's CPU MultiHeadAttention is registered for float only; its CUDA kernel for fp16 too.
_DTYPES = {"cpu": ("FLOAT",), "gpu": ("FLOAT", "FLOAT16")}


def fuse(model, level: str) -> dict[str, int]:
    """Rewrite `model` (onnx_ir) for ONNX Runtime's `level` provider; returns what was fused."""
    if level not in LEVELS:
        raise ValueError(f"optimization level {level!r}: choose from {', '.join(LEVELS)}")
    if level == "none":
        return {}
    fused = {"attention": fuse_attention(model, _DTYPES[level]), "rms_norm": divide_by_root(model)}
    _remove_dead(model.graph)  # once: the rewrites only leave chains nothing reads
    return fused


def divide_by_root(model) -> int:
    """Rewrite every `x * Reciprocal(Sqrt(v))` as `x / Sqrt(v)`; returns how many."""
    import onnx_ir as ir

    graph, done = model.graph, 0
    for reciprocal in [n for n in graph if n.op_type == "Reciprocal" and _producer(n.inputs[0], "Sqrt")]:
        for use in list(reciprocal.outputs[0].uses()):
            if use.node.op_type != "Mul":
                continue
            divide = ir.node("Div", [use.node.inputs[1 - use.idx], reciprocal.inputs[0]])
            graph.insert_before(use.node, [divide])
            use.node.outputs[0].replace_all_uses_with(divide.outputs[0])
            done += 1
    return done


def fuse_attention(model, dtypes=("FLOAT",)) -> int:
    """Every recognized attention of `model` as MultiHeadAttention; returns how many."""
    graph = model.graph
    masks: dict[int, object] = {}  # id(mask value) -> (key_padding_mask, every key valid)
    done = 0
    for softmax in [n for n in graph if n.op_type == "Softmax"]:
        found = _match(softmax)
        if found is None or found.q.dtype.name not in dtypes:
            continue
        _replace(graph, found, masks, done)
        done += 1
    if done:
        model.opset_imports[MS_DOMAIN] = 1
    return done


class _Attention:
    """The parts of one matched attention."""

    def __init__(self, q, k, v, scale: float, bias, out_node):
        self.q, self.k, self.v, self.scale, self.bias, self.out_node = q, k, v, scale, bias, out_node

    @property
    def heads(self) -> int:
        return int(self.q.shape[1])

    @property
    def head_dim(self) -> int:
        return int(self.q.shape[3])


def _producer(value, op_type: str):
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type == op_type else None


def _scalar(value) -> float | None:
    """The value of a constant scalar input, else None."""
    tensor = value.const_value if value is not None else None
    if tensor is None or tensor.size != 1:
        return None
    return float(np.asarray(tensor.numpy()).reshape(()))


def _scaled(value):
    """(x, c) for `x * c` with a constant scalar c, else None."""
    mul = _producer(value, "Mul")
    if mul is None:
        return None
    for i in (0, 1):
        c = _scalar(mul.inputs[1 - i])
        if c is not None:
            return mul.inputs[i], c
    return None


def _transposed_key(kt):
    """k [B,N,L,H] from the exporter's k^T: Reshape(Transpose(Reshape(k, [B*N, L, H]), [0,2,1]))."""
    outer = _producer(kt, "Reshape")
    transpose = _producer(outer.inputs[0], "Transpose") if outer else None
    if transpose is None or list(transpose.attributes["perm"].as_ints()) != [0, 2, 1]:
        return None
    inner = _producer(transpose.inputs[0], "Reshape")
    return inner.inputs[0] if inner else None


def _rank4(value) -> bool:
    shape = value.shape
    return shape is not None and len(shape) == 4 and isinstance(shape[1], int) and isinstance(shape[3], int)


def _match(softmax) -> _Attention | None:
    axis = softmax.attributes.get("axis")
    if axis is not None and axis.as_int() not in (-1, 3):
        return None
    scores, bias = softmax.inputs[0], None
    add = _producer(scores, "Add")
    if add is not None:
        first = next((i for i in (0, 1) if _producer(add.inputs[i], "MatMul")), None)
        if first is None:
            return None
        scores, bias = add.inputs[first], add.inputs[1 - first]
    first = _producer(scores, "MatMul")
    scaled_q, scaled_kt = (_scaled(v) for v in first.inputs) if first else (None, None)
    if scaled_q is None or scaled_kt is None:
        return None
    key = _transposed_key(scaled_kt[0])
    if key is None:
        return None
    second = _probabilities_reader(softmax)
    if second is None:
        return None
    q, k, v = scaled_q[0], key, second.inputs[1]
    if not all(_rank4(t) for t in (q, k, v)) or q.shape[3] != k.shape[3]:
        return None
    return _Attention(q, k, v, scaled_q[1] * scaled_kt[1], bias, second)


def _probabilities_reader(softmax):
    """The MatMul of the probabilities and v, through the exporter's guard Where(IsNaN(p), 0, p)."""
    probs = softmax.outputs[0]
    uses = list(probs.uses())
    if len(uses) == 2 and {u.node.op_type for u in uses} == {"IsNaN", "Where"}:
        probs = next(u.node for u in uses if u.node.op_type == "Where").outputs[0]
        uses = list(probs.uses())
    if len(uses) == 1 and uses[0].node.op_type == "MatMul" and uses[0].idx == 0:
        return uses[0].node
    return None


def _ints(graph, name: str, values: list[int]):
    """The int64 initializer `name`, registered on first use."""
    import onnx_ir as ir

    if name in graph.initializers:
        return graph.initializers[name]
    value = ir.Value(name=name, const_value=ir.tensor(np.array(values, np.int64), name=name))
    graph.register_initializer(value)
    return value


def _to_packed(graph, value, nodes: list):
    """[B,N,S,H] -> [B,S,N*H], the layout MultiHeadAttention's flash kernel reads."""
    import onnx_ir as ir

    transpose = ir.node("Transpose", [value], attributes={"perm": [0, 2, 1, 3]})
    shape = _ints(graph, "mha.packed_shape", [0, 0, -1])
    nodes += [transpose, ir.node("Reshape", [transpose.outputs[0], shape])]
    return nodes[-1].outputs[0]


def _key_padding(graph, bias, before, masks: dict):
    """For a bias Where(valid [B,1,1,L], 0, -inf): (key_padding_mask [B, L] int32, every key
    valid, a bool scalar), made once per mask; else None."""
    import onnx_ir as ir

    where = _producer(bias, "Where")
    valid = where.inputs[0] if where is not None else None
    shape = valid.shape if valid is not None else None
    if shape is None or len(shape) != 4 or shape[1] != 1 or shape[2] != 1 or valid.dtype != ir.DataType.BOOL:
        return None
    if id(valid) not in masks:
        flat = ir.node("Reshape", [valid, _ints(graph, "mha.mask_shape", [0, -1])])
        mask = ir.node("Cast", [flat.outputs[0]], attributes={"to": ir.DataType.INT32})
        fewest = ir.node("ReduceMin", [mask.outputs[0]], attributes={"keepdims": 0})
        every = ir.node("Cast", [fewest.outputs[0]], attributes={"to": ir.DataType.BOOL})
        graph.insert_before(before, [flat, mask, fewest, every])
        masks[id(valid)] = (mask.outputs[0], every.outputs[0])
    return masks[id(valid)]


def _replace(graph, found: _Attention, masks: dict, index: int) -> None:
    import onnx_ir as ir

    nodes: list = []
    q = _to_packed(graph, found.q, nodes)
    k = _to_packed(graph, found.k, nodes)
    v = _to_packed(graph, found.v, nodes)
    attributes = {"num_heads": found.heads, "scale": found.scale}
    graph.insert_before(found.out_node, nodes)
    padding = _key_padding(graph, found.bias, found.out_node, masks) if found.bias is not None else None
    if found.bias is None:
        attention = ir.node("MultiHeadAttention", [q, k, v], attributes=attributes, domain=MS_DOMAIN)
    elif padding is None:
        inputs = [q, k, v, None, None, found.bias]
        attention = ir.node("MultiHeadAttention", inputs, attributes=attributes, domain=MS_DOMAIN)
    else:
        attention = _dispatch(q, k, v, padding, attributes, found, index)
    out = attention.outputs[0]
    out.dtype = found.q.dtype
    back_shape = _ints(graph, f"mha.split_shape_{found.heads}_{found.head_dim}", [0, 0, found.heads, found.head_dim])
    split = ir.node("Reshape", [out, back_shape])
    bnsh = ir.node("Transpose", [split.outputs[0]], attributes={"perm": [0, 2, 1, 3]})
    graph.insert_before(found.out_node, [attention, split, bnsh])
    found.out_node.outputs[0].replace_all_uses_with(bnsh.outputs[0])


def _dispatch(q, k, v, padding, attributes: dict, found: _Attention, index: int):
    """If every key is valid, the flash (unmasked) node; else the node with the key padding mask."""
    import onnx_ir as ir

    mask, every = padding

    def branch(name: str, inputs: list):
        node = ir.node("MultiHeadAttention", inputs, attributes=attributes, domain=MS_DOMAIN)
        node.outputs[0].dtype = found.q.dtype
        node.outputs[0].name = f"attention_{index}_{name}"
        return ir.Graph([], [node.outputs[0]], nodes=[node], name=f"attention_{index}_{name}")

    flash = branch("unpadded", [q, k, v])
    masked = branch("padded", [q, k, v, None, mask])
    return ir.node(
        "If",
        [every],
        attributes={
            "then_branch": ir.AttrGraph("then_branch", flash),
            "else_branch": ir.AttrGraph("else_branch", masked),
        },
    )


def _remove_dead(graph) -> None:
    """Drop the nodes and constants nothing reads any more (the matched chains' leftovers)."""
    outputs = set(map(id, graph.outputs))
    changed = True
    while changed:
        changed = False
        for node in reversed(list(graph)):
            if all(not o.uses() and id(o) not in outputs for o in node.outputs):
                graph.remove(node, safe=True)
                changed = True
    for name, value in list(graph.initializers.items()):
        if not value.uses() and id(value) not in outputs:
            del graph.initializers[name]
