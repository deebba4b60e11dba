"""The Core ML target's rewrites of the reference, checked in torch fp32 where they must be exact:
the Neural Engine's split-einsum attention, and the transformer cut into chained chunks."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from qiedge.core.artifacts import ModelFacts
from qiedge.export import chunks
from qiedge.export.cases import CaseContext, transformer_step
from qiedge.export.coreml_attention import split_attention
from qiedge.export.run import model_configs
from qiedge.export.specs import SPECS, describe
from qiedge.reference_model.model_dir import ModelDir
from qiedge.runtime.backends.pytorch import TorchBackend
from qiedge.runtime.chained import ChainedSession


@pytest.mark.parametrize("query_rows", [1, 7])
def test_split_einsum_attention_equals_sdpa(query_rows):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 8, generator=gen) for n in (7, 11, 11))
    mask = torch.rand(2, 1, query_rows, 11, generator=gen) > 0.3
    mask[..., 0] = True  # every query sees a key, as in the model
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(split_attention(q, k, v, mask, chunk=3), expected, rtol=1e-5, atol=1e-6)


def fp16(key, shape) -> float:
    return 2.0 * math.prod(shape)


class ChunkSession:
    """A chunk graph in torch behind the session interface, fed by name as the runtime feeds it."""

    def __init__(self, module, spec):
        self.module, self.spec = module, spec

    def run(self, feeds):
        args = [torch.from_numpy(np.asarray(feeds[t.name])) for t in self.spec.inputs]
        with torch.no_grad():
            out = self.module(*args)
        out = out if isinstance(out, tuple) else (out,)
        return {t.name: o.numpy() for t, o in zip(self.spec.outputs, out)}


def chained(component: str, model: ModelDir, plan) -> ChainedSession:
    configs = model_configs(model, None)
    sessions = []
    for chunk in plan:
        spec = chunks.chunk_spec(SPECS[component], chunk)
        entry = {
            "layers": [chunk.layers.start, chunk.layers.stop],
            "layered": [
                t.name for t in (*SPECS[component].inputs, *SPECS[component].outputs) if t.shape[0] == "layers"
            ],
            "outputs": describe(spec.outputs, configs, "fp32"),
        }
        sessions.append((ChunkSession(spec.wrapper(model.load_transformer()).eval(), spec), entry))
    return ChainedSession(sessions, [t.name for t in SPECS[component].outputs])


def test_chained_chunks_equal_the_whole_transformer(model):
    plan = chunks.plan(model_configs(model, None), fp16, limit_mb=0.2)
    assert [list(c.layers) for c in plan] == [[0], [1]]
    reference = TorchBackend(model)
    whole = {name: reference.load(name) for name in chunks.CHUNKED}
    parts = {name: chained(name, model, plan) for name in chunks.CHUNKED}
    facts = ModelFacts.from_model_dir(model)
    context = CaseContext(facts, model.transformer.context_in_dim, model.vae.in_channels)
    for _, feeds in transformer_step(context):
        prefix = feeds.pop("prefix")
        cache = whole["transformer_prefix"].run(prefix)
        for name, value in parts["transformer_prefix"].run(prefix).items():
            np.testing.assert_allclose(value, cache[name], rtol=1e-5, atol=1e-6)
        expected = whole["transformer_step"].run({**feeds, **cache})["velocity"]
        actual = parts["transformer_step"].run({**feeds, **cache})["velocity"]
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


def test_a_chunk_limit_below_one_block_is_refused(model):
    configs = model_configs(model, None)
    with pytest.raises(ValueError, match="more than --max-chunk-mb 0.01"):
        chunks.plan(configs, fp16, limit_mb=0.01)


def test_chunks_never_name_an_input_as_an_output():
    """Core ML refuses a function whose input and output share a name: a middle chunk takes the
    hidden states and returns the next ones (the demo checkpoint's four blocks, one a chunk)."""
    from qiedge.reference_model.model_dir import demo_model_dir

    configs = model_configs(ModelDir.open(demo_model_dir()), None)
    plan = chunks.plan(configs, fp16, limit_mb=0.7)
    assert len(plan) == 4
    for chunk in plan:
        for name in chunks.CHUNKED:
            spec = chunks.chunk_spec(SPECS[name], chunk)
            assert not {t.name for t in spec.inputs} & {t.name for t in spec.outputs}, (name, chunk)
