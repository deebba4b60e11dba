"""The NumPy kernels behind runtime/coreml_program.py: one small function per ML Program op type,
taking the op's inputs by their MIL names (fp16 values arrive widened to fp32; the caller rounds
each result to its output's dtype). Semantics follow coremltools' MIL op definitions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def _unary(fn: Callable) -> Callable:
    return lambda x: fn(x)  # MIL passes inputs by name; ufuncs take them by position


def _binary(fn: Callable) -> Callable:
    return lambda x, y: fn(x, y)


def _axes(axes, rank: int) -> tuple[int, ...] | None:
    return None if axes is None else tuple(int(a) % rank for a in np.atleast_1d(axes))


def _reduce(fn: Callable) -> Callable:
    return lambda x, keep_dims, axes=None: fn(x, axis=_axes(axes, x.ndim), keepdims=bool(keep_dims))


def _channels(v: np.ndarray, rank: int) -> np.ndarray:
    """A per-channel vector shaped to broadcast over [N, C, *spatial]."""
    return np.reshape(v, (-1,) + (1,) * (rank - 2))


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


_erf = np.frompyfunc(math.erf, 1, 1)  # NumPy has no erf; math.erf's float64, rounded, is correctly rounded fp32


def _gelu(x, mode):
    if mode == "EXACT":
        return 0.5 * x * (1 + _erf(x.astype(np.float64) / math.sqrt(2)).astype(x.dtype))
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return x * _sigmoid(1.702 * x)  # SIGMOID_APPROXIMATION


def _normalize(x, axes, epsilon):
    mean = x.mean(axes, keepdims=True)
    return (x - mean) / np.sqrt(np.square(x - mean).mean(axes, keepdims=True) + epsilon)


def _layer_norm(x, axes, epsilon, gamma=None, beta=None):
    axes = _axes(axes, x.ndim)
    out = _normalize(x, axes, epsilon)
    shape = [n if i in axes else 1 for i, n in enumerate(x.shape)]  # gamma, beta: x.shape[axes]
    out = out if gamma is None else out * np.reshape(gamma, shape)
    return out if beta is None else out + np.reshape(beta, shape)


def _instance_norm(x, epsilon, gamma=None, beta=None):
    out = _normalize(x, tuple(range(2, x.ndim)), epsilon)
    out = out if gamma is None else out * _channels(gamma, x.ndim)
    return out if beta is None else out + _channels(beta, x.ndim)


def _batch_norm(x, mean, variance, epsilon, gamma=None, beta=None):
    out = (x - _channels(mean, x.ndim)) / np.sqrt(_channels(variance, x.ndim) + epsilon)
    out = out if gamma is None else out * _channels(gamma, x.ndim)
    return out if beta is None else out + _channels(beta, x.ndim)


def _conv_pads(pad_type, pad, spatial, kernel, strides, dilations) -> list[tuple[int, int]]:
    if pad_type == "custom":
        return [tuple(p) for p in np.reshape(pad, (-1, 2)).tolist()]
    if pad_type == "valid":
        return [(0, 0)] * len(kernel)
    # same / same_lower: output size ceil(in / stride); same puts an odd extra pixel after, same_lower before
    pads = []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        total = max(0, (math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        pads.append((small, large) if pad_type == "same" else (large, small))
    return pads


def _conv(x, weight, strides, pad_type, pad, dilations, groups, bias=None):
    n, nd, g = x.shape[0], x.ndim - 2, int(groups)
    kernel = weight.shape[2:]
    pads = _conv_pads(pad_type, pad, x.shape[2:], kernel, strides, dilations)
    x = np.pad(x, [(0, 0), (0, 0), *pads])
    spans = [(k - 1) * int(d) + 1 for k, d in zip(kernel, dilations)]
    windows = sliding_window_view(x, spans, axis=tuple(range(2, x.ndim)))  # [N, C, *out, *span]
    steps = [slice(None, None, int(s)) for s in strides] + [slice(None, None, int(d)) for d in dilations]
    windows = windows[(slice(None), slice(None), *steps)]  # [N, C, *out, *K]
    windows = windows.reshape(n, g, -1, *windows.shape[2:])  # [N, G, C/G, *out, *K]
    weight = weight.reshape(g, -1, *weight.shape[1:])  # [G, O/G, C/G, *K]
    o, k = "xyz"[:nd], "ijk"[:nd]
    out = np.einsum(f"ngc{o}{k},gdc{k}->ngd{o}", windows, weight, optimize=True)
    out = out.reshape(n, -1, *out.shape[3:])  # [N, O, *out]
    return out if bias is None else out + _channels(bias, out.ndim)


def _matmul(x, y, transpose_x, transpose_y):
    x = np.swapaxes(x, -1, -2) if transpose_x else x
    return np.matmul(x, np.swapaxes(y, -1, -2) if transpose_y else y)


def _sdpa(query, key, value, attn_mask=None):
    scores = query @ np.swapaxes(key, -1, -2) / math.sqrt(query.shape[-1])  # [B, *, L, S]
    if attn_mask is not None:  # bool: True attends; float: added to the scores
        scores = np.where(attn_mask, scores, -np.inf) if attn_mask.dtype == bool else scores + attn_mask
    return _softmax(scores) @ value


def _concat(values, axis, interleave):
    if not interleave:
        return np.concatenate(values, axis)
    axis = int(axis) % values[0].ndim
    stacked = np.stack(values, axis + 1)  # interleave: element i of every input, then element i + 1
    return stacked.reshape(*values[0].shape[:axis], -1, *values[0].shape[axis + 1 :])


def _split(x, axis, num_splits=None, split_sizes=None):
    sizes = [x.shape[axis] // int(num_splits)] * int(num_splits) if split_sizes is None else split_sizes
    return tuple(np.split(x, np.cumsum(sizes)[:-1], axis))


def _index(rank, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None) -> tuple:
    """The NumPy index of a MIL slice (shared by slice_by_index and slice_update)."""
    unset = np.zeros(rank, bool)
    stride = np.ones(rank, int) if stride is None else stride
    begin_mask, end_mask, squeeze_mask = (unset if m is None else m for m in (begin_mask, end_mask, squeeze_mask))
    return tuple(
        (0 if bm else int(b)) if sq else slice(None if bm else int(b), None if em else int(e), int(s))
        for b, e, s, bm, em, sq in zip(begin, end, stride, begin_mask, end_mask, squeeze_mask)
    )


def _slice_by_index(x, begin, end, **masks):
    return x[_index(x.ndim, begin, end, **masks)]


def _slice_update(x, update, begin, end, **masks):
    out = np.array(x, copy=True)
    out[_index(x.ndim, begin, end, **masks)] = update
    return out


def _slice_by_size(x, begin, size):
    begin = [int(b) % n for b, n in zip(begin, x.shape)]  # a negative begin counts from the end
    return x[tuple(slice(b, None if s == -1 else b + int(s)) for b, s in zip(begin, size))]


def _gather(x, indices, axis: int, batch_dims: int):
    if batch_dims:  # the leading batch_dims axes of x and indices are walked together
        return np.stack([_gather(xi, ii, axis % x.ndim - 1, batch_dims - 1) for xi, ii in zip(x, indices)])
    return np.take(x, indices, axis)  # out-of-range indices raise, so validate_indices needs no work


def _gather_nd(x, indices, batch_dims: int):
    """x at the coordinates along indices' last axis: indices.shape[:-1] + x.shape[K:]."""
    if batch_dims:
        return np.stack([_gather_nd(xi, ii, batch_dims - 1) for xi, ii in zip(x, indices)])
    return x[tuple(np.moveaxis(np.asarray(indices), -1, 0))]


def _pad(x, pad, mode, constant_val):
    pairs = np.reshape(pad, (-1, 2)).tolist()  # before/after for the last len(pad) / 2 axes
    pairs = [(0, 0)] * (x.ndim - len(pairs)) + pairs
    if mode == "constant":
        return np.pad(x, pairs, constant_values=constant_val)
    return np.pad(x, pairs, {"reflect": "reflect", "replicate": "edge"}[mode])


def _upsample_nearest(x, scale_factor_height, scale_factor_width):
    for axis, scale in ((-2, scale_factor_height), (-1, scale_factor_width)):
        size = x.shape[axis]
        source = np.floor(np.arange(math.floor(size * scale)) / scale).astype(int)  # output i reads floor(i / scale)
        x = np.take(x, np.minimum(source, size - 1), axis)
    return x


def _band_part(x, lower, upper):
    rows, cols = np.indices(x.shape[-2:])
    keep = ((lower < 0) | (rows - cols <= lower)) & ((upper < 0) | (cols - rows <= upper))
    return np.where(keep, x, np.zeros((), x.dtype))


def _cumsum(x, axis, exclusive, reverse):
    x = np.flip(x, axis) if reverse else x
    out = np.cumsum(x, axis, dtype=x.dtype)
    if exclusive:  # shift by one: the first element sums nothing
        shifted = np.take(out, range(out.shape[axis] - 1), axis)
        out = np.concatenate([np.zeros_like(np.take(out, [0], axis)), shifted], axis)
    return np.flip(out, axis) if reverse else out


# op type -> kernel(**op inputs). Kernels see fp16 as fp32; the caller rounds to the output dtype.
KERNELS: dict[str, Callable[..., Any]] = {
    "cast": lambda x, dtype: x,  # the output's dtype does the cast
    "identity": lambda x: x,
    "linear": lambda x, weight, bias: x @ weight.T + bias,
    "matmul": _matmul,
    "conv": _conv,
    "einsum": lambda values, equation: np.einsum(equation, *values),
    "add": _binary(np.add),
    "sub": _binary(np.subtract),
    "mul": _binary(np.multiply),
    "real_div": _binary(np.divide),
    "pow": _binary(np.power),
    "maximum": _binary(np.maximum),
    "minimum": _binary(np.minimum),
    "abs": _unary(np.abs),
    "square": _unary(np.square),
    "sqrt": _unary(np.sqrt),
    "rsqrt": lambda x, epsilon: 1 / np.sqrt(x + epsilon),
    "exp": _unary(np.exp),
    "tanh": _unary(np.tanh),
    "cos": _unary(np.cos),
    "sin": _unary(np.sin),
    "relu": lambda x: np.maximum(x, 0),
    "sigmoid": _sigmoid,
    "silu": lambda x: x * _sigmoid(x),
    "gelu": _gelu,
    "clip": lambda x, alpha, beta: np.minimum(np.maximum(x, alpha), beta),
    "softmax": _softmax,
    "reduce_mean": _reduce(np.mean),
    "reduce_sum": _reduce(np.sum),
    "reduce_max": _reduce(np.max),
    "reduce_l2_norm": _reduce(lambda x, **kw: np.sqrt(np.sum(np.square(x), **kw))),
    "cumsum": _cumsum,
    "layer_norm": _layer_norm,
    "instance_norm": _instance_norm,
    "batch_norm": _batch_norm,
    "scaled_dot_product_attention": _sdpa,
    "equal": _binary(np.equal),
    "not_equal": _binary(np.not_equal),
    "less": _binary(np.less),
    "less_equal": _binary(np.less_equal),
    "greater": _binary(np.greater),
    "greater_equal": _binary(np.greater_equal),
    "logical_and": _binary(np.logical_and),
    "logical_or": _binary(np.logical_or),
    "logical_not": _unary(np.logical_not),
    "select": lambda cond, a, b: np.where(cond, a, b),
    "band_part": _band_part,
    "reshape": lambda x, shape: np.reshape(x, [int(s) for s in shape]),
    "transpose": lambda x, perm: np.transpose(x, [int(p) for p in perm]),
    "expand_dims": lambda x, axes: np.expand_dims(x, tuple(int(a) for a in axes)),
    "squeeze": lambda x, axes=None: np.squeeze(x, _axes(axes, x.ndim)),
    "concat": _concat,
    "stack": lambda values, axis: np.stack(values, int(axis)),
    "split": _split,
    "slice_by_index": _slice_by_index,
    "slice_by_size": _slice_by_size,
    "gather": lambda x, indices, axis, batch_dims, validate_indices: _gather(x, indices, int(axis), int(batch_dims)),
    "gather_nd": lambda x, indices, batch_dims, validate_indices: _gather_nd(x, indices, int(batch_dims)),
    "slice_update": _slice_update,
    "gather_along_axis": lambda x, indices, axis, validate_indices: np.take_along_axis(x, indices, int(axis)),
    "tile": lambda x, reps: np.tile(x, [int(r) for r in reps]),
    "pad": _pad,
    "upsample_nearest_neighbor": _upsample_nearest,
    "fill": lambda shape, value: np.full([int(s) for s in shape], value),
    "shape": lambda x: np.array(x.shape, np.int32),
    "range_1d": lambda end, start, step: np.arange(start, end, step),
}
