"""The Core ML export checks each MIL program around each pass pipeline instead of after every pass
(export/coreml_validate.py): the same packages, a broken program still refused, coremltools left as
it was found."""

from __future__ import annotations

import re

import pytest
import torch
from qiedge.core.coreml import coremltools
from qiedge.export.coreml_validate import once_per_pipeline

try:
    ct = coremltools()
except ImportError as e:
    pytest.skip(str(e), allow_module_level=True)
mb = ct.converters.mil.Builder
from coremltools.converters.mil.mil.block import InvalidBlockStateError  # noqa: E402
from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass  # noqa: E402
from coremltools.converters.mil.mil.passes.pass_pipeline import PassPipeline, PassPipelineManager  # noqa: E402
from coremltools.converters.mil.mil.passes.pass_registry import register_pass  # noqa: E402
from coremltools.converters.mil.mil.program import Function, Program  # noqa: E402


@register_pass(namespace="qiedge_test")
class orphan_a_use(AbstractGraphPass):  # noqa: N801 (coremltools names passes by their class)
    """Breaks the program: relu still reads its input, which no longer lists relu among its users."""

    def apply(self, prog):
        relu = prog.functions["main"].find_ops(op_type="relu")[0]
        relu.x.remove_child_op(relu)


def small_program():
    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3))])
    def prog(x):
        return mb.relu(x=mb.add(x=x, y=1.0))

    return prog


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm, self.proj = torch.nn.LayerNorm(8), torch.nn.Linear(8, 8)

    def forward(self, x):
        return torch.nn.functional.silu(self.proj(self.norm(x))) + x


def converted(validation) -> str:
    """The converted program as text, its names' counters dropped: coremltools numbers the names
    it makes from a process-wide count, which earlier conversions move."""
    torch.manual_seed(0)
    program = torch.export.export(Block().eval(), (torch.randn(2, 4, 8),)).run_decompositions({})
    with validation:
        model = ct.convert(program, minimum_deployment_target=ct.target.iOS18, skip_model_load=True)
    return re.sub(r"(\w)_\d+\b", r"\1", str(model.get_spec().mlProgram))


def forced_validations(monkeypatch) -> list[int]:
    """Counts the whole-program checks (coremltools' other calls return at once unless DEBUG)."""
    counted, validate = [0], Function.validate

    def counting(self, *args, force_validate=False, **kwargs):
        counted[0] += force_validate
        return validate(self, *args, force_validate=force_validate, **kwargs)

    monkeypatch.setattr(Function, "validate", counting)
    return counted


def test_the_default_pipeline_is_checked_twice_instead_of_after_every_pass(monkeypatch):
    counted = forced_validations(monkeypatch)
    PassPipelineManager.apply_pipeline(small_program(), PassPipeline.DEFAULT)
    assert counted[0] == len(PassPipeline.DEFAULT.passes) + 1
    counted[0] = 0
    with once_per_pipeline():
        PassPipelineManager.apply_pipeline(small_program(), PassPipeline.DEFAULT)
    assert counted[0] == 2


def test_a_pipeline_that_breaks_the_program_is_refused():
    broken = PassPipeline(["qiedge_test::orphan_a_use", "common::dead_code_elimination"], "broken")
    refused = pytest.raises(InvalidBlockStateError, match=r"consumed by op relu_\d+ 0 times, but op relu_\d+ uses it 1")
    with once_per_pipeline(), refused:
        PassPipelineManager.apply_pipeline(small_program(), broken)


@register_pass(namespace="qiedge_test")
class fail(AbstractGraphPass):  # noqa: N801
    def apply(self, prog):
        raise RuntimeError("a pass failed")


def test_coremltools_is_left_as_it_was_found():
    theirs = (PassPipelineManager.__dict__["apply_pipeline"], Program.validate)
    failing = PassPipeline(["common::dead_code_elimination", "qiedge_test::fail"], "failing")
    with pytest.raises(RuntimeError, match="a pass failed"), once_per_pipeline():
        PassPipelineManager.apply_pipeline(small_program(), failing)
    assert (PassPipelineManager.__dict__["apply_pipeline"], Program.validate) == theirs


def test_the_converted_program_is_the_same():
    from contextlib import nullcontext

    assert converted(once_per_pipeline()) == converted(nullcontext())
