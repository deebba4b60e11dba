"""The NumPy Core ML interpreter, op by op against torch.

Each case converts a tiny torch function with coremltools (iOS18), saves the package, loads it
back with `Program.load`, checks the package really holds the op under test, and compares the
interpreter with torch: fp32 tightly, fp16 as Core ML stores it (rounded after every op).
Ops torch never lowers to (`fill`, `shape`, conv's `same` padding, ...) are built in MIL directly.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from qiedge.core.coreml import coremltools
from qiedge.runtime.coreml_program import SUPPORTED, Program, UnsupportedOp
from torch.export.graph_signature import InputKind

try:
    ct = coremltools()
except ImportError as e:
    pytest.skip(str(e), allow_module_level=True)
mb, types = ct.converters.mil.Builder, ct.converters.mil.mil.types

torch.manual_seed(0)
FP32 = {"rtol": 1e-5, "atol": 1e-6}
FP16 = {"rtol": 1e-3, "atol": 1e-4}  # about one fp16 step: torch in half rounds where Core ML does


def rand(*shape: int) -> torch.Tensor:
    return torch.randn(*shape)


def ints(*shape: int, high: int = 3) -> torch.Tensor:
    return torch.randint(0, high, shape)


class Fn(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


def op_types(model) -> set[str]:
    """The op types a converted model's saved spec holds, in every function."""
    functions = model.get_spec().mlProgram.functions.values()
    return {op.type for f in functions for block in f.block_specializations.values() for op in block.operations}


def convert(module, args, precision=ct.precision.FLOAT32, target=ct.target.iOS18, float_dtype=np.float32, **kwargs):
    """(model, input names): `module` exported, decomposed and converted."""
    ep = torch.export.export(module.eval(), tuple(args)).run_decompositions({})
    names = [s.arg.name for s in ep.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    inputs = [
        ct.TensorType(name=n, shape=a.shape, dtype=float_dtype if a.is_floating_point() else np.int32)
        for n, a in zip(names, args)
    ]
    model = ct.convert(ep, minimum_deployment_target=target, compute_precision=precision, inputs=inputs, **kwargs)
    return model, names


def load(model, tmp_path, name="m") -> Program:
    model.save(str(tmp_path / f"{name}.mlpackage"))
    return Program.load(tmp_path / f"{name}.mlpackage")


def run_torch(op, module, args, tmp_path, precision=ct.precision.FLOAT32):
    """The interpreter's single output for `module(*args)` converted, asserting it holds `op`."""
    model, names = convert(module, args, precision)
    assert op in op_types(model), f"{op} not in {sorted(op_types(model))}"
    (out,) = load(model, tmp_path).run("main", {n: a.numpy() for n, a in zip(names, args)}).values()
    return out


def masked_sdpa(q, k, v, m):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=m > 0)


def randomized(layer):
    """`layer` with random parameters (and running statistics), not the identity it starts as."""
    for tensor in [*layer.parameters(), *layer.buffers()]:
        if tensor.is_floating_point():
            tensor.data.uniform_(0.5, 2)
    return layer


X, Y = rand(2, 4, 6, 8), rand(2, 4, 6, 8)
Q, K, V = rand(2, 3, 5, 8), rand(2, 3, 7, 8), rand(2, 3, 7, 4)
MASK = torch.cat([torch.ones(2, 1, 5, 1), rand(2, 1, 5, 6)], -1)  # every query attends to key 0
IX, JX = ints(2, 6), ints(2, 6)


def case(op, fn, *args, id=None):
    module = fn if isinstance(fn, torch.nn.Module) else Fn(fn)
    return pytest.param(op, module, list(args), id=id or op)


CASES = [
    case("linear", torch.nn.Linear(8, 5), rand(2, 3, 8)),
    case("matmul", torch.matmul, rand(2, 3, 4), rand(2, 4, 5)),
    case("conv", torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2), X, id="conv2d"),
    case("conv", torch.nn.Conv2d(4, 4, 3, padding="same", groups=4), X, id="conv2d-depthwise"),
    case("conv", torch.nn.Conv1d(4, 6, 3, padding=2), rand(2, 4, 9), id="conv1d"),
    case("conv", torch.nn.Conv3d(2, 4, (2, 3, 3), padding=(1, 0, 1)), rand(1, 2, 4, 5, 6), id="conv3d"),
    case("add", torch.add, X, Y),
    case("sub", torch.sub, X, Y),
    case("mul", torch.mul, X, Y),
    case("real_div", torch.div, X, Y),
    case("pow", lambda a, b: a.abs() ** b, X, Y),
    case("maximum", torch.maximum, X, Y),
    case("minimum", torch.minimum, X, Y),
    case("abs", torch.abs, X),
    case("sqrt", lambda a: a.abs().sqrt(), X),
    case("rsqrt", lambda a: a.abs().rsqrt(), X),
    case("square", lambda a: torch.nn.GroupNorm(2, 4, affine=False)(a), X),
    case("exp", torch.exp, X),
    case("tanh", torch.tanh, X),
    case("cos", torch.cos, X),
    case("sin", torch.sin, X),
    case("relu", torch.relu, X),
    case("sigmoid", torch.sigmoid, X * 30),
    case("silu", F.silu, X * 30),
    case("gelu", F.gelu, X * 3, id="gelu-exact"),
    case("clip", lambda a: a.clamp(-0.5, 0.7), X),
    case("reduce_mean", lambda a: a.mean((1, 3), keepdim=True), X),
    case("reduce_sum", lambda a: a.sum(2), X),
    case("reduce_max", lambda a: a.amax((1, 2)), X),
    case("reduce_l2_norm", lambda a: torch.linalg.vector_norm(a, dim=1, keepdim=True), X),
    case("cumsum", lambda a: torch.cumsum(a, 2), X),
    case("cumsum", lambda a: torch.cumsum(a, 1, dtype=torch.int32), IX, id="cumsum-int"),
    case("layer_norm", randomized(torch.nn.LayerNorm(8)), X, id="layer_norm-last"),
    case("layer_norm", randomized(torch.nn.LayerNorm((6, 8))), X, id="layer_norm-two-axes"),
    case("batch_norm", randomized(torch.nn.BatchNorm2d(4)), X),
    case("instance_norm", randomized(torch.nn.InstanceNorm2d(4, affine=True)), X),
    case("softmax", lambda a: a.softmax(1), X),
    case("scaled_dot_product_attention", F.scaled_dot_product_attention, Q, K, V, id="sdpa"),
    case("scaled_dot_product_attention", masked_sdpa, Q, K, V, MASK, id="sdpa-bool-mask"),
    case(
        "scaled_dot_product_attention",
        lambda *a: F.scaled_dot_product_attention(*a[:3], attn_mask=a[3]),
        Q,
        K,
        V,
        MASK,
        id="sdpa-float-mask",
    ),
    case("identity", F.scaled_dot_product_attention, Q, Q, Q),  # one tensor fed thrice
    case("equal", lambda a, b: (a == b).float(), IX, JX),
    case("not_equal", lambda a, b: (a != b).float(), IX, JX),
    case("less", lambda a, b: (a < b).float(), X, Y),
    case("less_equal", lambda a, b: (a <= b).float(), IX, JX),
    case("greater", lambda a, b: (a > b).float(), X, Y),
    case("greater_equal", lambda a, b: (a >= b).float(), IX, JX),
    case("logical_and", lambda a, b: torch.logical_and(a > 0, b > 0).float(), X, Y),
    case("logical_or", lambda a, b: torch.logical_or(a > 0, b > 0).float(), X, Y),
    case("logical_not", lambda a: torch.logical_not(a > 0).float(), X),
    case("select", lambda a, b: torch.where(a > b, a, b), X, Y),
    case("cast", lambda a: a.int(), X * 3, id="cast-float-to-int"),
    case("cast", torch.mul, X, ints(2, 1, 6, 1), id="cast-int-to-float"),
    case("band_part", torch.tril, X, id="band_part-tril"),
    case("band_part", lambda a: torch.triu(a, 1), X, id="band_part-triu"),
    case("reshape", lambda a: a.reshape(2, 24, 8) * 2, X),
    case("transpose", lambda a: a.permute(0, 2, 3, 1) * 2, X),
    case("expand_dims", lambda a: a.unsqueeze(1) * 2, X),
    case("squeeze", lambda a: a[:, :1].squeeze(1) * 2, X),
    case("concat", lambda a, b: torch.cat([a, b], 1), X, Y),
    case("stack", lambda a, b: torch.stack([a, b], -1), X, Y),
    case("split", lambda a: torch.split(a, [1, 3], 1)[1] * 2, X),
    case("slice_by_index", lambda a: a[:, 1:3, ::2, -1], X),
    case("gather", lambda a, i: a[:, i], X, torch.tensor([3, -1, 0])),
    case("gather_nd", lambda a, i, j: a[i, :, j], X, torch.tensor([1, 0, 1]), torch.tensor([2, 5, 0])),
    case("slice_update", lambda a, b: torch.select_scatter(a, b, 1, 2), X, rand(2, 6, 8)),
    case("gather_along_axis", lambda a, i: torch.gather(a, 2, i), X, ints(2, 4, 3, 8, high=6)),
    case("tile", lambda a: a.repeat(1, 2, 1, 3), X),
    case("pad", lambda a: F.pad(a, (1, 2, 2, 1), value=0.5), X, id="pad-constant"),
    case("pad", lambda a: F.pad(a, (1, 2, 2, 1), mode="reflect"), X, id="pad-reflect"),
    case("pad", lambda a: F.pad(a, (1, 2, 2, 1), mode="replicate"), X, id="pad-replicate"),
    case("upsample_nearest_neighbor", lambda a: F.interpolate(a, scale_factor=2), X, id="upsample-2x"),
    case("upsample_nearest_neighbor", lambda a: F.interpolate(a, scale_factor=(1.5, 2.5)), X, id="upsample-fractional"),
]


@pytest.mark.parametrize("op, module, args", CASES)
def test_op_fp32(op, module, args, tmp_path):
    out = run_torch(op, module, args, tmp_path)
    with torch.no_grad():
        ref = module(*args).numpy()
    assert out.dtype == ref.dtype
    np.testing.assert_allclose(out, ref, **FP32)


def run_mil(op, build, inputs: dict[str, np.ndarray], tmp_path):
    """The interpreter's single output for a MIL program built by `build`, kept as written."""
    specs = [mb.TensorSpec(shape=a.shape, dtype=types.numpy_type_to_builtin_type(a.dtype)) for a in inputs.values()]
    program = mb.program(input_specs=specs, opset_version=ct.target.iOS18)(build)
    model = ct.convert(
        program,
        minimum_deployment_target=ct.target.iOS18,
        compute_precision=ct.precision.FLOAT32,
        pass_pipeline=ct.PassPipeline.EMPTY,  # no constant folding: `shape`, `fill`, `range_1d` stay ops
    )
    assert op in op_types(model), f"{op} not in {sorted(op_types(model))}"
    (out,) = load(model, tmp_path).run("main", inputs).values()
    return out


WEIGHT = np.arange(6 * 4 * 3 * 2, dtype=np.float32).reshape(6, 4, 3, 2) / 100  # [O, C, KH, KW]


def conv(pad_type):
    return lambda x: mb.conv(x=x, weight=WEIGHT, strides=[2, 3], dilations=[1, 2], pad_type=pad_type)


def torch_conv(pads):  # pads: F.pad's (left, right, top, bottom)
    return lambda x: F.conv2d(F.pad(x, pads), torch.from_numpy(WEIGHT), stride=(2, 3), dilation=(1, 2))


def mil_case(op, build, reference, *inputs, id=None):
    return pytest.param(op, build, reference, [np.asarray(a) for a in inputs], id=id or op)


def slice_masks(x):
    begin, end, stride = [1, 0, 5, 7], [0, 3, 0, 0], [1, 2, -2, 1]
    masks = {"begin_mask": [True, False, False, False], "end_mask": [True, False, True, False]}
    return mb.slice_by_index(
        x=x, begin=begin, end=end, stride=stride, squeeze_mask=[False, False, False, True], **masks
    )


# x: [2, 4, 6, 8]; same pads H by (0, 1) and W by (0, 1) for these strides and dilations, same_lower by (1, 0)
MIL_CASES = [
    mil_case("conv", conv("same"), torch_conv((0, 1, 0, 1)), X, id="conv-same"),
    mil_case("conv", conv("same_lower"), torch_conv((1, 0, 1, 0)), X, id="conv-same_lower"),
    mil_case("conv", conv("valid"), torch_conv((0, 0, 0, 0)), X, id="conv-valid"),
    mil_case(
        "einsum",
        lambda x, y: mb.einsum(values=(x, y), equation="nchw,nwhu->nchu"),  # one of the few MIL accepts
        lambda x, y: torch.einsum("nchw,nwhu->nchu", x, y),
        X,
        rand(2, 8, 6, 5),
    ),
    mil_case(
        "gelu",
        lambda x: mb.gelu(x=x, mode="SIGMOID_APPROXIMATION"),
        lambda x: x * torch.sigmoid(1.702 * x),
        X,
        id="gelu-sigmoid",
    ),
    mil_case(
        "gelu",
        lambda x: mb.gelu(x=x, mode="TANH_APPROXIMATION"),
        lambda x: F.gelu(x, approximate="tanh"),
        X * 3,
        id="gelu-tanh",  # torch's tanh gelu converts to mode EXACT (coremltools 9.0), so it is built here
    ),
    mil_case("fill", lambda x: mb.add(x=x, y=mb.fill(shape=mb.shape(x=x), value=2.5)), lambda x: x + 2.5, X),
    mil_case(
        "shape",
        lambda x: mb.cast(x=mb.shape(x=x), dtype="fp32"),
        lambda x: torch.tensor(x.shape, dtype=torch.float32),
        X,
    ),
    mil_case(
        "range_1d",
        lambda x: mb.mul(x=x, y=mb.range_1d(start=0.5, end=4.5, step=0.5)),
        lambda x: x * torch.arange(0.5, 4.5, 0.5),
        X,
    ),
    mil_case(
        "slice_by_size",
        lambda x: mb.slice_by_size(x=x, begin=[0, -3, 1, 2], size=[-1, 2, 4, -1]),
        lambda x: x[:, -3:-1, 1:5, 2:],
        X,
    ),
    mil_case("slice_by_index", slice_masks, lambda x: x[:, 0:3:2].flip(2)[:, :, ::2, 7], X, id="slice_by_index-masks"),
    mil_case(
        "concat",
        lambda x, y: mb.concat(values=(x, y), axis=1, interleave=True),
        lambda x, y: torch.stack([x, y], 2).reshape(2, 8, 6, 8),
        X,
        Y,
        id="concat-interleave",
    ),
    mil_case(
        "gather",
        lambda x, y: mb.gather(x=x, indices=y, axis=2, batch_dims=1),
        lambda x, y: torch.stack([x[b][:, y[b]] for b in range(2)]),
        X,
        IX[:, :4].int(),
        id="gather-batch_dims",
    ),
]


@pytest.mark.parametrize("op, build, reference, inputs", MIL_CASES)
def test_op_mil(op, build, reference, inputs, tmp_path):
    out = run_mil(op, build, dict(zip(("x", "y"), inputs)), tmp_path)
    np.testing.assert_allclose(out, reference(*map(torch.from_numpy, inputs)).numpy(), **FP32)


def test_cases_cover_every_supported_op():
    covered = {p.values[0] for p in CASES + MIL_CASES}.union(*(ops for _, ops, *_ in COMPRESSIONS.values()))
    untested = SUPPORTED - covered - {"const"}
    assert not untested, f"supported ops without a test: {sorted(untested)}"


def test_fp16_rounds_after_every_op(tmp_path):
    """(x + 0.1) - x near 1000: fp32 keeps about 0.1, fp16 storage keeps what the rounded sum kept."""
    x = 1000 + 10 * rand(64)
    fp16 = {"float_dtype": np.float16, "outputs": [ct.TensorType(name="out", dtype=np.float16)]}
    model, names = convert(Fn(lambda a: (a + 0.1) - a), [x], ct.precision.FLOAT16, **fp16)
    program = load(model, tmp_path)
    assert program.inputs("main") == {names[0]: (np.dtype(np.float16), (64,))}
    out = program.run("main", {names[0]: x.numpy()})["out"]  # fp32 feed, rounded to the fp16 input
    x16 = x.numpy().astype(np.float16).astype(np.float32)
    total = (x16 + np.float32(np.float16(0.1))).astype(np.float16).astype(np.float32)
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, (total - x16).astype(np.float16))
    assert np.abs(out.astype(np.float32) - 0.1).min() > 0.05  # every sum lost the 0.1: fp16 steps are 0.5 here


FP16_CASES = [
    case("conv", torch.nn.Conv2d(4, 6, 3, padding=1), X),
    case("linear", torch.nn.Linear(8, 5), rand(2, 3, 8)),
    case("gelu", F.gelu, X * 3),
    case("layer_norm", randomized(torch.nn.LayerNorm(8)), X),
    case("softmax", lambda a: a.softmax(-1), X * 4),
    case("scaled_dot_product_attention", F.scaled_dot_product_attention, Q, K, V, id="sdpa"),
]


@pytest.mark.parametrize("op, module, args", FP16_CASES)
def test_op_fp16(op, module, args, tmp_path):
    """Against torch in half precision, which also rounds every op's output to fp16."""
    out = run_torch(op, module, args, tmp_path, ct.precision.FLOAT16)  # fp32 output, cast from fp16
    np.testing.assert_array_equal(out, out.astype(np.float16).astype(np.float32))
    with torch.no_grad():
        ref = copy.deepcopy(module).half()(*[a.half() for a in args]).float().numpy()
    np.testing.assert_allclose(out, ref, **FP16)


def test_multifunction_package(tmp_path):
    modules = {"project": (torch.nn.Linear(8, 4), rand(2, 8)), "filter": (torch.nn.Conv1d(3, 2, 3), rand(1, 3, 5))}
    description = ct.utils.MultiFunctionDescriptor()
    for name, (module, x) in modules.items():
        convert(module, [x])[0].save(str(tmp_path / f"{name}.mlpackage"))
        description.add_function(str(tmp_path / f"{name}.mlpackage"), "main", name)
    description.default_function_name = "project"
    ct.utils.save_multifunction(description, str(tmp_path / "both.mlpackage"))
    program = Program.load(tmp_path / "both.mlpackage")
    assert sorted(program.functions) == ["filter", "project"]
    for name, (module, x) in modules.items():
        (feed,), (output,) = program.inputs(name), program.outputs(name)
        out = program.run(name, {feed: x.numpy()})[output]
        np.testing.assert_allclose(out, module(x).detach().numpy(), **FP32)


optimize = ct.optimize.coreml


def quantized(model, joint=False, **config):
    config = optimize.OptimizationConfig(global_config=optimize.OpLinearQuantizerConfig(**config))
    return optimize.linear_quantize_weights(model, config, joint_compression=joint)


def palettized(model, joint=False, **config):  # uniform: k-means palettization needs scikit-learn
    config = optimize.OpPalettizerConfig(mode="uniform", granularity="per_grouped_channel", group_size=16, **config)
    return optimize.palettize_weights(model, optimize.OptimizationConfig(global_config=config), joint_compression=joint)


def pruned(model):
    config = optimize.OptimizationConfig(global_config=optimize.OpMagnitudePrunerConfig(target_sparsity=0.5))
    return optimize.prune_weights(model, config)


INT8 = {"mode": "linear_symmetric", "dtype": "int8", "granularity": "per_channel"}
INT4 = {"mode": "linear_symmetric", "dtype": "int4", "granularity": "per_block", "block_size": 32}
# name: (compression, the ops it leaves, the most a weight may move as a fraction of max |w|, target)
COMPRESSIONS = {
    "int8-per-channel": (lambda m: quantized(m, **INT8), {"constexpr_blockwise_shift_scale"}, 1 / 250),  # max/254
    "int4-per-block": (lambda m: quantized(m, **INT4), {"constexpr_blockwise_shift_scale"}, 1 / 13),  # max/14
    "palettize-4bit": (lambda m: palettized(m, nbits=4), {"constexpr_lut_to_dense"}, 1 / 13),  # range/30
    "palettize-6bit": (lambda m: palettized(m, nbits=6), {"constexpr_lut_to_dense"}, 1 / 55),  # range/126
    # Pruning zeroes the smaller half: weights under the median |w|.
    "prune-50%": (pruned, {"constexpr_sparse_to_dense"}, 2 / 3),
    "prune-palettize-4bit": (
        lambda m: palettized(pruned(m), joint=True, nbits=4),
        {"constexpr_lut_to_sparse", "constexpr_sparse_to_dense"},
        2 / 3,
    ),
    "prune-int8": (
        lambda m: quantized(pruned(m), joint=True, **INT8),
        {"constexpr_sparse_blockwise_shift_scale", "constexpr_sparse_to_dense"},
        2 / 3,
    ),
    "int8-per-channel-iOS16": (
        lambda m: quantized(m, **INT8),
        {"constexpr_affine_dequantize"},
        1 / 250,
        ct.target.iOS16,
    ),
}


@pytest.mark.parametrize(
    "name, precision",
    [(name, ct.precision.FLOAT32) for name in COMPRESSIONS] + [("int4-per-block", ct.precision.FLOAT16)],
)
def test_compressed_weights(name, precision, tmp_path):
    """Decompressed by coremltools: the interpreter equals torch run with coremltools' dense weights."""
    compress, ops, bound, *target = COMPRESSIONS[name]
    layer, x = torch.nn.Linear(64, 96), rand(3, 64)
    model, names = convert(layer, [x], precision, *target)
    model = compress(model)
    assert ops <= op_types(model)
    (out,) = load(model, tmp_path).run("main", {names[0]: x.numpy()}).values()

    dense = optimize.get_weights_metadata(optimize.decompress_weights(model), weight_threshold=0)
    (weight,) = [w.val.astype(np.float32) for w in dense.values() if w.val.shape == (96, 64)]
    original = layer.weight.detach().numpy()
    assert np.abs(weight - original).max() <= bound * np.abs(original).max()
    if precision == ct.precision.FLOAT32:
        ref = F.linear(x, torch.from_numpy(weight), layer.bias).detach().numpy()
        np.testing.assert_allclose(out, ref, **FP32)
    else:
        x16, bias16 = x.half().float(), layer.bias.detach().half().float()
        ref = F.linear(x16, torch.from_numpy(weight), bias16).half().float().numpy()
        np.testing.assert_allclose(out, ref, **FP16)


def test_unsupported_op_fails_up_front_naming_it(tmp_path):
    assert "acos" not in SUPPORTED
    with pytest.raises(UnsupportedOp, match=r"acos \(op 'the_acos'\)"):
        run_mil("acos", lambda x: mb.exp(x=mb.acos(x=x, name="the_acos")), {"x": X.numpy()}, tmp_path)


def test_feeds_are_checked_and_cast(tmp_path):
    layer, x = torch.nn.Linear(8, 5), rand(2, 8)
    program = load(convert(layer, [x])[0], tmp_path)
    assert program.inputs("main") == {"input": (np.dtype(np.float32), (2, 8))}
    with pytest.raises(ValueError, match="missing input 'input'"):
        program.run("main", {})
    with pytest.raises(ValueError, match=r"input 'input' has shape \(2, 7\), the program wants \(2, 8\)"):
        program.run("main", {"input": np.zeros((2, 7))})
    with pytest.raises(ValueError, match="no function 'other'"):
        program.run("other", {"input": x.numpy()})
    first, again = (program.run("main", {"input": x.numpy().astype(np.float64)})["linear"] for _ in range(2))
    assert first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(first, layer(x).detach().numpy(), **FP32)


def test_flexible_input_shape(tmp_path):
    """A RangeDim input declares -1 and takes any size in its range."""
    layer = torch.nn.Linear(8, 5)
    dynamic = {"input": {0: torch.export.Dim("batch", min=1, max=4)}}
    ep = torch.export.export(layer.eval(), (rand(3, 8),), dynamic_shapes=dynamic).run_decompositions({})
    flexible = ct.TensorType(name="input", shape=(ct.RangeDim(1, 4), 8))
    fp32 = {"minimum_deployment_target": ct.target.iOS18, "compute_precision": ct.precision.FLOAT32}
    model = ct.convert(ep, inputs=[flexible], **fp32)
    program = load(model, tmp_path)
    assert program.inputs("main") == {"input": (np.dtype(np.float32), (-1, 8))}
    for x in (rand(1, 8), rand(3, 8)):
        (out,) = program.run("main", {"input": x.numpy()}).values()
        np.testing.assert_allclose(out, layer(x).detach().numpy(), **FP32)
