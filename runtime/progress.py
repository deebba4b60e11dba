"""Progress bars for long work (rich), silent when the output is JSON."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def step_progress(description: str, quiet: bool = False) -> Iterator[Callable[[int, int], None]]:
    """Yields on_step(done, total), which advances a bar on stderr."""
    if quiet:
        yield lambda done, total: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=None)

        def on_step(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield on_step
