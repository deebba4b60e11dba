"""Graphs cut into block ranges, each its own graph: the transformer's prefix and step, and the
condition encoder's decoder layers.

The Neural Engine on iOS will not load a model with more than about 1 GB of weights, so a
deployment for it splits these: chunk i holds blocks [a, b) and, for the transformer's two graphs,
their functions share that chunk's weights. Chunks hand each other the hidden states (and the
transformer's modulation); the first embeds, the transformer's last projects out. The runtime
chains them (runtime/chained.py), and only one chunk's weights are ever loaded while exporting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from qiedge.core.contract import CONTRACTS, FLOAT, HANDED, Contract, TensorSpec
from torch import nn

from .specs import SPECS, ComponentSpec, ModelConfigs
from .wrappers import ConditionEncoderGraph, decoded, embedded


@dataclass(frozen=True)
class Layout:
    """Where a component's graph wrapper holds its blocks, and the modules that only the first
    chunk (`head`: embedders) or the last (`tail`: output layers) keeps; paths in the wrapper."""

    blocks: str
    head: tuple[str, ...]
    tail: tuple[str, ...]


TRANSFORMER = Layout(
    "transformer.transformer_blocks",
    tuple(f"transformer.{m}" for m in ("img_in", "txt_in", "time_text_embed", "modulation")),
    tuple(f"transformer.{m}" for m in ("norm_out", "proj_out")),
)
# The final norm stays in every chunk: the graph reads the hidden states before it, so it is unused.
ENCODER = Layout("model.language_model.layers", ("model.language_model.embed_tokens",), ())
LAYOUTS = {"condition_encoder": ENCODER, "transformer_prefix": TRANSFORMER, "transformer_step": TRANSFORMER}
CHUNKED = tuple(LAYOUTS)
REMEDY = (
    "compress the weights (--compress), raise --max-chunk-mb, or leave the Neural Engine (--compute-units cpu_and_gpu)"
)


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


def plan(
    component: str, configs: ModelConfigs, stored_bytes: Callable[[str, tuple[int, ...]], float], limit_mb: float
) -> list[Chunk]:
    """Consecutive block ranges whose stored weights (with the head modules in the first chunk and
    the tail in the last) each stay under `limit_mb` MiB; `stored_bytes(key, shape)` is what one
    checkpoint tensor takes in the package (precision and compression)."""
    spec, layout = SPECS[component], LAYOUTS[component]
    with torch.device("meta"):
        graph = spec.build(configs)

    def size(path: str) -> float:
        tensors = graph.get_submodule(path).named_parameters(prefix=path)
        return sum(stored_bytes(key.removeprefix(spec.key_prefix), tuple(p.shape)) for key, p in tensors) / 2**20

    blocks = [size(f"{layout.blocks}.{i}") for i in range(len(graph.get_submodule(layout.blocks)))]
    head, tail = (sum(size(path) for path in paths) for paths in (layout.head, layout.tail))
    if head > limit_mb:
        raise ValueError(
            f"{component}: the embedders alone need {head:.4g} MB, more than --max-chunk-mb {limit_mb:g}: {REMEDY}"
        )
    ranges, start, total = [], 0, head
    for i, block in enumerate(blocks):
        extra = tail if i == len(blocks) - 1 else 0
        if i > start and total + block + extra > limit_mb:
            ranges.append(range(start, i))
            start, total = i, 0
        total += block + extra
        if total > limit_mb:
            with_head = " with the embedders" if i == 0 and head else ""
            raise ValueError(
                f"{component}: block {i}{with_head} needs {total:.4g} MB of weights in its chunk, more than "
                f"--max-chunk-mb {limit_mb:g}: {REMEDY}"
            )
    ranges.append(range(start, len(blocks)))
    return [Chunk(i, r, i == len(ranges) - 1) for i, r in enumerate(ranges)]


class Skipped(nn.Module):
    """A block another chunk holds: the hidden states pass through."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


def cut(graph: nn.Module, layout: Layout, chunk: Chunk) -> None:
    """Drop from `graph` the modules other chunks hold, before any weight is loaded; the ones kept
    keep their checkpoint names."""
    blocks = graph.get_submodule(layout.blocks)
    for i in range(len(blocks)):
        if i not in chunk.layers:
            blocks[i] = Skipped()
    for path in (() if chunk.first else layout.head) + (() if chunk.last else layout.tail):
        owner, _, name = path.rpartition(".")
        setattr(graph.get_submodule(owner), name, None)


class ChunkGraph(nn.Module):
    """One chunk of one of the transformer's graphs: the transformer with only this chunk's modules."""

    def __init__(self, transformer: nn.Module, chunk: Chunk):
        super().__init__()
        self.transformer, self.chunk = transformer, chunk
        cut(self, TRANSFORMER, chunk)


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
    """A transformer chunk's inputs and outputs: the component's own, with K/V cut to the chunk's layers,
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


def _encoder_contract(chunk: Chunk, deepstack: int) -> Contract:
    """The encoder's chunk: the first takes the component's inputs; a later one the hidden states,
    the mask and positions, and the deepstack features while its layers still take some."""
    whole = CONTRACTS["condition_encoder"]
    hidden = TensorSpec("hidden", FLOAT, ("batch", "tokens", "context"))
    by_name = {t.name: t for t in whole.inputs}
    later = ("attention_mask", "position_ids") + (
        ("deepstack_embeds", "image_index") if chunk.layers.start < deepstack else ()
    )
    inputs = whole.inputs if chunk.first else (replace(hidden, name="hidden" + HANDED), *(by_name[n] for n in later))
    return Contract(inputs, whole.outputs if chunk.last else (hidden,))


class EncoderChunkGraph(ConditionEncoderGraph):
    """One chunk of the condition encoder: Qwen3-VL's language model with only this chunk's decoder
    layers (and, in the first, the token embeddings)."""

    def __init__(self, vl_model: nn.Module, chunk: Chunk):
        super().__init__(vl_model)
        self.chunk = chunk
        cut(self, ENCODER, chunk)

    def forward(self, *args):
        text, chunk = self.model.language_model, self.chunk
        if chunk.first:
            input_ids, attention_mask, position_ids, image_embeds, deepstack_embeds, image_index = args
            hidden = embedded(text, input_ids, image_embeds, image_index)
        else:
            hidden, attention_mask, position_ids, *rest = args
            deepstack_embeds, image_index = rest or (None, None)
        return decoded(text, hidden, attention_mask, position_ids, deepstack_embeds, image_index, chunk.layers)


def chunk_spec(spec: ComponentSpec, chunk: Chunk, configs: ModelConfigs) -> ComponentSpec:
    if spec.name == "condition_encoder":
        deepstack = len(configs.encoder["vision_config"]["deepstack_visual_indexes"])
        wrapper, contract = EncoderChunkGraph, _encoder_contract(chunk, deepstack)
    else:
        wrapper = PrefixChunkGraph if spec.name == "transformer_prefix" else StepChunkGraph
        contract = _contract(spec.name, chunk)
    return replace(
        spec,
        name=f"{spec.name} chunk {chunk.index}",
        wrapper=lambda reference: wrapper(reference, chunk),
        contract=contract,
    )
