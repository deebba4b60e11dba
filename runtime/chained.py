"""One component run as a chain of chunk sessions (export/chunks.py): each chunk gets the
component's inputs (the per-layer ones cut to its layers) plus what earlier chunks handed on
(hidden states, modulation); each of the component's outputs is the last chunk's, or, for a
per-layer output, every chunk's layers in order."""

from __future__ import annotations

import numpy as np
from qiedge.core.contract import HANDED

from .backends import Session


class ChainedSession:
    def __init__(self, chunks: list[tuple[Session, dict]], outputs: list[str]):
        self.chunks = chunks  # (session, the chunk's manifest entry)
        self.outputs = outputs  # the component's output names

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        handed, per_layer = {}, {}
        for session, chunk in self.chunks:
            start, stop = chunk["layers"]
            layered = set(chunk["layered"])
            inputs = {n: v[start:stop] if n in layered else v for n, v in feeds.items()}
            out = session.run({**inputs, **{name + HANDED: value for name, value in handed.items()}})
            for name, value in out.items():
                if name in layered:
                    per_layer.setdefault(name, []).append(value)
                else:
                    handed[name] = value
        return {n: np.concatenate(per_layer[n]) if n in per_layer else handed[n] for n in self.outputs}
