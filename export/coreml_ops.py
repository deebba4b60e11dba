"""Converters for the aten ops coremltools 9 lacks, or converts wrongly, that the reference and
transformers emit; in coremltools' torch frontend only while qiedge converts."""

from __future__ import annotations

from contextlib import contextmanager


def _new_ones(context, node):
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch import ops
    from coremltools.converters.mil.mil import types

    like, size = ops._get_inputs(context, node)[:2]
    ones = ops._make_fill_op(size, 1.0, node.name + "_fill")
    context.add(mb.cast(x=ones, dtype=types.builtin_to_string(like.dtype), name=node.name))


def _logical(context, node):
    """`&` and `|` of masks: transformers combines float or integer padding masks with boolean
    ones, which coremltools refuses; both sides become booleans. Two integers (a real bitwise
    operation) keep coremltools' own path."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch import ops
    from coremltools.converters.mil.mil import types

    inputs = ops._get_inputs(context, node)
    is_or = "or" in node.kind
    if all(types.is_int(v.dtype) for v in inputs):
        return (ops.bitwise_or if is_or else ops.bitwise_and)(context, node)
    x, y = (v if types.is_bool(v.dtype) else mb.cast(x=v, dtype="bool") for v in inputs)
    context.add((mb.logical_or if is_or else mb.logical_and)(x=x, y=y, name=node.name))


def _gelu(context, node):
    """coremltools 9 reads `approximate` only when positional; torch.export passes it by keyword,
    so the tanh form was converted as the exact one (5e-4 off, measured by the interpreter)."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch import ops

    inputs = ops._get_inputs(context, node)
    approximate = inputs[1] if len(inputs) > 1 else ops._get_kwinputs(context, node, "approximate", ["none"])[0]
    mode = {"tanh": "TANH_APPROXIMATION", "none": "EXACT"}[getattr(approximate, "val", approximate)]
    context.add(mb.gelu(x=inputs[0], mode=mode, name=node.name))


@contextmanager
def converters():
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY as registry

    # Under both spellings: the support check looks up the fx node's kind, the converter its
    # sanitized name.
    logical = ("__and__", "and", "bitwise_and", "__or__", "or", "bitwise_or")
    ours = {"new_ones": _new_ones, "gelu": _gelu, **dict.fromkeys(logical, _logical)}
    theirs = {name: registry.name_to_func_mapping.get(name) for name in ours}
    registry.name_to_func_mapping.update(ours)
    try:
        yield
    finally:
        for name, convert in theirs.items():
            if convert is None:
                del registry.name_to_func_mapping[name]
            else:
                registry.name_to_func_mapping[name] = convert
