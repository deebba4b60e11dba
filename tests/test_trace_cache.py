"""The trace cache (export/trace_cache.py): an export is the same whether its graphs were traced
or read back, a hit does not trace, the key follows what a graph depends on, and a cache that
cannot be used costs only the saving."""

from __future__ import annotations

import pytest
import torch
from qiedge.export import onnx as onnx_target
from qiedge.export.run import export_artifacts, model_configs
from qiedge.export.specs import SPECS
from qiedge.reference_model import presets
from qiedge.reference_model.model_dir import ModelDir, init_model_dir

COMPONENT = "vision_encoder"  # the quickest graph to trace


def _export(out, cache, monkeypatch) -> dict:
    monkeypatch.setenv("QIEDGE_CACHE", str(cache))
    export_artifacts(out, preset=presets.TINY, components=[COMPONENT])
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_read_back_trace_exports_the_same_files(tmp_path, monkeypatch):
    uncached = _export(tmp_path / "off", "off", monkeypatch)
    traced = _export(tmp_path / "miss", tmp_path / "cache", monkeypatch)
    assert list((tmp_path / "cache" / "traces").glob("*.onnx")) != []

    def no_tracing(*args):
        raise AssertionError("a cached graph was traced again")

    monkeypatch.setattr(onnx_target, "_traced", no_tracing)
    read_back = _export(tmp_path / "hit", tmp_path / "cache", monkeypatch)
    assert uncached == traced == read_back


@pytest.mark.slow
def test_an_unusable_cache_warns_and_exports(tmp_path, monkeypatch):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.warns(UserWarning, match="the traces cache .* is not usable"):
        files = _export(tmp_path / "out", not_a_folder, monkeypatch)
    assert any(path.suffix == ".onnx" for path in files)


def _key(component=COMPONENT, configs=None, precision=torch.float32) -> str:
    spec, configs = SPECS[component], configs or model_configs(None, presets.TINY)
    with torch.device("meta"):
        module = spec.build(configs).to(dtype=precision)
    return onnx_target.trace_key(spec, configs, precision, module)


def test_the_key_follows_what_the_graph_depends_on(tmp_path):
    demo, step = model_configs(None, presets.DEMO), "transformer_step"
    assert _key() == _key()
    assert len({_key(), _key(precision=torch.float16), _key("vae_decoder"), _key(step), _key(step, demo)}) == 5
    assert _key(configs=demo) == _key()  # the demo preset has the tiny one's encoder
    # A checkpoint of the tiny architecture: its transformer is the preset's; its encoder's config
    # differs from the preset's (the tokenizer's special token ids), and so does the encoder's key.
    checkpoint = model_configs(ModelDir.open(init_model_dir(presets.TINY, tmp_path / "tiny", seed=3)), None)
    assert _key("transformer_step", checkpoint) == _key("transformer_step")
    assert _key("condition_encoder", checkpoint) != _key("condition_encoder")
