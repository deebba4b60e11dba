"""coremltools checks the whole MIL program after each of the ~100 graph passes of a conversion
(`Program.validate`, forced whatever its DEBUG flag), which is a third of a conversion's time
(three tiny-model components: 32.8 s -> 21.5 s). Inside `once_per_pipeline` it checks the
program before and after each pipeline instead: a pipeline that leaves an invalid program is still
refused, it is only no longer told which of its passes did it. The ops' scopes, which coremltools
also checks after dead-code elimination, are still checked where the backend writes the final
program. The patch is process-wide, for the export's one converting thread."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def once_per_pipeline() -> Iterator[None]:
    from coremltools.converters.mil.mil.passes.pass_pipeline import PassPipelineManager
    from coremltools.converters.mil.mil.program import Program

    theirs = PassPipelineManager.__dict__["apply_pipeline"]
    apply, validate = theirs.__func__, Program.validate

    def validated_around(prog, pass_pipeline):
        validate(prog)
        outer, Program.validate = Program.validate, _unchecked  # should a pass run a pipeline of its own
        try:
            apply(prog, pass_pipeline)
        finally:
            Program.validate = outer
        validate(prog)

    PassPipelineManager.apply_pipeline = staticmethod(validated_around)
    try:
        yield
    finally:
        PassPipelineManager.apply_pipeline = theirs


def _unchecked(prog, check_essential_scope: bool = False) -> None:
    pass
