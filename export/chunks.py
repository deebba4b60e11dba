"""The transformer's prefix and step graphs cut into block ranges, each its own graph.

The Neural Engine on iOS will not load a model with more than about 1 GB of weights, so a
deployment for it splits the transformer: chunk i holds blocks [a, b) and, for both graphs, their
functions share that chunk's weights. Chunks hand each other the hidden states and the
modulation; the first embeds, the last projects out. The runtime chains them (runtime/chained.py),
and only one chunk's weights are ever loaded while exporting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from qiedge.core.contract import CONTRACTS, FLOAT, HANDED, Contract, TensorSpec
from torch import nn

from .specs import ComponentSpec, ModelConfigs

CHUNKED = ("transformer_prefix", "transformer_step")
EMBEDDERS = ("img_in", "txt_in", "time_text_embed", "modulation")
OUTPUT = ("norm_out", "proj_out")


@dataclass(frozen=True)
class Chunk:
    index: int
    layers: range
    last: bool

    @property
    def first(self) -> bool:
        return self.layers.start == 0

    @property
    def package(self) -> str:
        return f"chunk{self.index}"


def plan(configs: ModelConfigs, stored_bytes: Callable[[str, tuple[int, ...]], float], limit_mb: float) -> list[Chunk]:
    """Consecutive block ranges whose stored weights (with the embedders in the first chunk and
    the output layers in the last) each stay under `limit_mb` MiB; `stored_bytes(key, shape)` is
    what one checkpoint tensor takes in the package (precision and compression)."""
    import torch

    from .specs import SPECS

    with torch.device("meta"):
        transformer = SPECS["transformer_step"].reference(configs)

    def size(name: str) -> float:
        module = transformer.get_submodule(name)
        return sum(stored_bytes(f"{name}.{key}", tuple(p.shape)) for key, p in module.named_parameters()) / 2**20

    blocks = [size(f"transformer_blocks.{i}") for i in range(len(transformer.transformer_blocks))]
    head = sum(size(name) for name in EMBEDDERS)
    tail = sum(size(name) for name in OUTPUT)
    ranges, start, total = [], 0, head
    for i, block in enumerate(blocks):
        extra = tail if i == len(blocks) - 1 else 0
        if i > start and total + block + extra > limit_mb:
            ranges.append(range(start, i))
            start, total = i, 0
        total += block + extra
        if total > limit_mb:
            raise ValueError(
                f"block {i} needs {total:.3g} MB of weights in its chunk, more than --max-chunk-mb {limit_mb:g}"
            )
    ranges.append(range(start, len(blocks)))
    return [Chunk(i, r, i == len(ranges) - 1) for i, r in enumerate(ranges)]


class ChunkGraph(nn.Module):
    """One chunk of a graph: the transformer with only this chunk's modules, which keep their
    checkpoint names (the others are dropped before any weight is loaded)."""

    def __init__(self, transformer: nn.Module, chunk: Chunk):
        super().__init__()
        for i in range(len(transformer.transformer_blocks)):
            if i not in chunk.layers:
                transformer.transformer_blocks[i] = nn.Identity()
        for name in (() if chunk.first else EMBEDDERS) + (() if chunk.last else OUTPUT):
            setattr(transformer, name, None)
        self.transformer, self.chunk = transformer, chunk


class PrefixChunkGraph(ChunkGraph):
    def forward(self, *args):
        t, chunk = self.transformer, self.chunk
        if chunk.first:
            text, cond_latents, gather, segment_ids, key_valid, cos, sin = args
            x, mod = t.prefix_embed(text, cond_latents, gather)
        else:
            x, mod, segment_ids, key_valid, cos, sin = args
        x, keys, values = t.prefix_blocks(x, mod, segment_ids, key_valid, cos, sin, chunk.layers)
        handed_on = () if chunk.last else ((x, mod) if chunk.first else (x,))
        return (*handed_on, keys, values)


class StepChunkGraph(ChunkGraph):
    def forward(self, *args):
        t, chunk = self.transformer, self.chunk
        if chunk.first:
            latents, timestep, past_keys, past_values, key_valid, cos, sin = args
            x, temb, mod = t.step_embed(latents, timestep)
        else:
            x, temb, mod, past_keys, past_values, key_valid, cos, sin = args
        x = t.step_blocks(x, mod, past_keys, past_values, key_valid, cos, sin, chunk.layers)
        return t.step_out(x, temb) if chunk.last else (x, temb, mod) if chunk.first else x


def _contract(component: str, chunk: Chunk) -> Contract:
    """The chunk's inputs and outputs: the component's own, with K/V cut to the chunk's layers,
    plus the hidden states, timestep embedding and modulation handed from chunk to chunk. What a
    chunk takes from an earlier one is named with HANDED (Core ML names no tensor both an input
    and an output of one function, and a middle chunk takes and returns `hidden`)."""
    whole = CONTRACTS[component]
    sequence = "prefix" if component == "transformer_prefix" else "target"
    hidden = TensorSpec("hidden", FLOAT, ("batch", sequence, "inner"))
    temb = TensorSpec("temb", FLOAT, ("batch", "inner"))
    # The prefix is modulated at t = 0 for every row: one modulation for the batch.
    mod = TensorSpec("modulation", FLOAT, (1, 1, "modulation") if sequence == "prefix" else ("batch", 1, "modulation"))
    hidden_in, temb_in, mod_in = (replace(t, name=t.name + HANDED) for t in (hidden, temb, mod))

    def layered(t: TensorSpec) -> TensorSpec:
        return replace(t, shape=(len(chunk.layers), *t.shape[1:])) if t.shape[0] == "layers" else t

    if component == "transformer_prefix":
        head = whole.inputs if chunk.first else (hidden_in, mod_in, *whole.inputs[3:])
        handed = () if chunk.last else ((hidden, mod) if chunk.first else (hidden,))
    else:
        head = whole.inputs if chunk.first else (hidden_in, temb_in, mod_in, *whole.inputs[2:])
        handed = whole.outputs if chunk.last else ((hidden, temb, mod) if chunk.first else (hidden,))
    outputs = tuple(layered(t) for t in whole.outputs) if component == "transformer_prefix" else ()
    return Contract(tuple(layered(t) for t in head), (*handed, *outputs))


def chunk_spec(spec: ComponentSpec, chunk: Chunk) -> ComponentSpec:
    wrapper = PrefixChunkGraph if spec.name == "transformer_prefix" else StepChunkGraph
    return replace(
        spec,
        name=f"{spec.name} chunk {chunk.index}",
        wrapper=lambda transformer: wrapper(transformer, chunk),
        contract=_contract(spec.name, chunk),
    )
