"""The Core ML target's rewrites of the reference, checked in torch fp32 where they must be exact:
the Neural Engine's split-einsum attention, and the transformer and the condition encoder cut
into chained chunks."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from qiedge.core.artifacts import ModelFacts
from qiedge.export import chunks
from qiedge.export.cases import CaseContext, transformer_step
from qiedge.export.coreml_attention import split_attention
from qiedge.export.coreml_convert import load_module
from qiedge.export.run import model_configs
from qiedge.export.sources import RandomSource
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


TRANSFORMER = ("transformer_prefix", "transformer_step")


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
        spec = chunks.chunk_spec(SPECS[component], chunk, configs)
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
    plan = chunks.plan("transformer_step", model_configs(model, None), fp16, limit_mb=0.2)
    assert [list(c.layers) for c in plan] == [[0], [1]]
    reference = TorchBackend(model)
    whole = {name: reference.load(name) for name in TRANSFORMER}
    parts = {name: chained(name, model, plan) for name in TRANSFORMER}
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


def encoder_feeds(configs, rng) -> dict[str, np.ndarray]:
    """Two prompts of 12 tokens, the second padded after 9, each with image tokens in its middle."""
    text, vision = configs.encoder["text_config"], configs.encoder["vision_config"]
    context, deepstack, rows = text["hidden_size"], len(vision["deepstack_visual_indexes"]), 7
    image_index = np.zeros((2, 12), dtype=np.int64)
    image_index[0, 3:6], image_index[1, 2:8] = [1, 2, 3], [1, 2, 3, 4, 5, 6]
    attention_mask = np.ones((2, 12), dtype=np.int64)
    attention_mask[1, 9:] = 0
    return {
        "input_ids": rng.integers(0, text["vocab_size"], (2, 12)),
        "attention_mask": attention_mask,
        "position_ids": np.broadcast_to(np.arange(12), (3, 2, 12)).copy(),
        "image_embeds": rng.standard_normal((rows, context), dtype=np.float32),
        "deepstack_embeds": rng.standard_normal((deepstack, rows, context), dtype=np.float32),
        "image_index": image_index,
    }


def test_chained_chunks_equal_the_whole_condition_encoder(deeper_encoder_dir):
    """One layer a chunk: the second still takes a deepstack feature, the third none."""
    configs = model_configs(ModelDir.open(deeper_encoder_dir), None)
    spec = SPECS["condition_encoder"]
    weights = RandomSource({k: tuple(v.shape) for k, v in spec.build(configs).state_dict().items()}, seed=3)
    constants = spec.constants(configs)
    plan = chunks.plan("condition_encoder", configs, fp16, limit_mb=0.12)
    assert [list(c.layers) for c in plan] == [[0], [1], [2]]
    sessions = []
    for chunk in plan:
        part = chunks.chunk_spec(spec, chunk, configs)
        names = [t.name for t in part.inputs]
        assert ("deepstack_embeds" in names) == (chunk.index < 2), names
        module = load_module(part, configs, weights, constants)
        assert (module.model.language_model.embed_tokens is not None) == chunk.first
        entry = {"layers": [chunk.layers.start, chunk.layers.stop], "layered": []}
        sessions.append((ChunkSession(module, part), entry))
    feeds = encoder_feeds(configs, np.random.default_rng(0))
    expected = ChunkSession(load_module(spec, configs, weights, constants), spec).run(feeds)["hidden_states"]
    actual = ChainedSession(sessions, ["hidden_states"]).run(feeds)["hidden_states"]
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_a_chunk_limit_below_one_block_is_refused(model):
    configs = model_configs(model, None)
    with pytest.raises(ValueError, match="block 0 with the embedders needs .* more than --max-chunk-mb 0.1:"):
        chunks.plan("transformer_step", configs, fp16, limit_mb=0.1)
    with pytest.raises(ValueError, match="block 1 needs .* more than --max-chunk-mb 0.1:"):
        chunks.plan(
            "transformer_step",
            configs,
            lambda key, shape: 0 if key.startswith("transformer_blocks.0.") else fp16(key, shape),
            limit_mb=0.1,
        )


def test_every_chunk_plan_is_checked_before_anything_converts(tmp_path, monkeypatch):
    """The encoder fits 0.15 MB chunks and comes first; the transformer's first block does not."""
    from qiedge.export import coreml
    from qiedge.export.run import export_artifacts
    from qiedge.reference_model.presets import TINY

    monkeypatch.setattr(coreml, "convert", lambda *args: pytest.fail("a component converted before the refusal"))
    out = tmp_path / "art"
    with pytest.raises(ValueError, match=r"transformer_step: block 0 with .*--compute-units cpu_and_gpu\)"):
        export_artifacts(
            out,
            target="coreml",
            preset=TINY,
            components=["condition_encoder", "transformer_step"],
            target_options={"max_chunk_mb": 0.15},
        )
    assert not out.exists()


def test_the_7b_encoders_fp16_embeddings_alone_exceed_the_neural_engines_limit():
    """Qwen3-VL's token table is 1187 MiB in fp16: an fp16 encoder for the Neural Engine is refused,
    an int8 one cut into chunks of at most 1024 MiB, the table in the first."""
    from qiedge.export.coreml_compress import stored_bytes
    from qiedge.reference_model.presets import QWEN_IMAGE_2_7B

    configs = model_configs(None, QWEN_IMAGE_2_7B)
    with pytest.raises(ValueError, match="condition_encoder: the embedders alone need 1187 MB"):
        chunks.plan("condition_encoder", configs, fp16, limit_mb=1024)
    plan = chunks.plan("condition_encoder", configs, lambda k, s: stored_bytes("int8", 2, k, s), limit_mb=1024)
    assert [(c.layers.start, c.layers.stop) for c in plan][:2] == [(0, 2), (2, 7)] and plan[-1].layers.stop == 36


def test_chunks_never_name_an_input_as_an_output():
    """Core ML refuses a function whose input and output share a name: a middle chunk takes the
    hidden states and returns the next ones (the demo checkpoint's four blocks, one a chunk)."""
    from qiedge.reference_model.model_dir import demo_model_dir

    configs = model_configs(ModelDir.open(demo_model_dir()), None)
    plan = chunks.plan("transformer_step", configs, fp16, limit_mb=0.7)
    assert len(plan) == 4
    for chunk in plan:
        for name in TRANSFORMER:
            spec = chunks.chunk_spec(SPECS[name], chunk, configs)
            assert not {t.name for t in spec.inputs} & {t.name for t in spec.outputs}, (name, chunk)
