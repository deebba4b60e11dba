"""Calibration statistics (quantization/calibrate.py): read back from the cache exactly as they were
recorded, shared by the recipes that calibrate on the same set, recorded again for another set
or model, and recorded alike on the host reference and through the cuda backend's sessions."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from qiedge.quantization import calibrate as calibration_module
from qiedge.quantization.calibrate import calibrate
from qiedge.quantization.recipe import Recipe
from qiedge.reference_model import presets
from qiedge.reference_model.model_dir import ModelDir, init_model_dir

QUIET = {"log": lambda message: None}


def _quick(name: str, **changes) -> Recipe:
    """The shipped recipe on a smaller set: four prompts at 64 px, one of them on the CFG path."""
    recipe = Recipe.load(name)
    return replace(recipe, calibration_set=replace(recipe.calibration_set, count=4, size=64, cfg_prompts=1, **changes))


def _same(a, b) -> None:
    assert a.settings == b.settings and a.attention == b.attention and a.layers.keys() == b.layers.keys()
    for name, stats in a.layers.items():
        other = b.layers[name]
        np.testing.assert_array_equal(stats.channel_absmax, other.channel_absmax)
        assert stats.absmax == other.absmax and stats.percentile(99.99) == other.percentile(99.99)
        np.testing.assert_array_equal(np.concatenate(stats.samples), np.concatenate(other.samples))


@pytest.fixture
def recorded(monkeypatch, tmp_path):
    """Calls of the recorder, with a cache of this test's own."""
    monkeypatch.setenv("QIEDGE_CACHE", str(tmp_path / "cache"))
    calls = []

    def counted(*args, record=calibration_module._record):
        calls.append(args)
        return record(*args)

    monkeypatch.setattr(calibration_module, "_record", counted)
    return calls


def test_a_cached_calibration_is_the_recorded_one_and_recipes_share_it(tiny_dir, recorded):
    recipe = _quick("fp8-attention")
    raw = calibration_module._record(ModelDir.open(tiny_dir), recipe, None)  # never written or read back
    stored = calibrate(tiny_dir, recipe, **QUIET)
    read_back = calibrate(tiny_dir, recipe, **QUIET)
    int8 = calibrate(tiny_dir, _quick("int8"), **QUIET)  # another recipe, the same set
    assert len(recorded) == 2
    assert len(raw.attention) == ModelDir.open(tiny_dir).transformer.num_layers
    _same(stored, raw)
    _same(read_back, raw)
    assert read_back.digest() == raw.digest()
    assert int8.attention == {} and int8.digest() != raw.digest()  # FP8 attention's ranges only where asked
    _same(replace(int8, attention=raw.attention), raw)


def test_another_set_or_model_is_calibrated_again(tiny_dir, tmp_path, recorded):
    calibrate(tiny_dir, _quick("int8"), **QUIET)
    calibrate(tiny_dir, _quick("int8", seed=1), **QUIET)
    other = init_model_dir(presets.TINY, tmp_path / "other", seed=1)
    calibrate(other, _quick("int8"), **QUIET)
    assert len(recorded) == 3


def test_the_device_path_records_the_host_references_statistics(tiny_dir, recorded):
    """On a GPU the cuda backend's sessions run the fp32 reference for calibration; here on the CPU,
    against the torch backend's."""
    host = calibrate(tiny_dir, _quick("fp8-attention"), **QUIET)
    device = calibrate(tiny_dir, _quick("fp8-attention"), device="cpu", **QUIET)
    assert [args[2] for args in recorded] == [None, "cpu"]  # not read back for one another
    assert host.layers.keys() == device.layers.keys() and host.attention.keys() == device.attention.keys()
    for name, stats in host.layers.items():
        # Measured: equal on this CPU; tolerated as far as the step's unmasked attention (where
        # nothing is padded) could sum in another order than the masked one.
        np.testing.assert_allclose(device.layers[name].channel_absmax, stats.channel_absmax, rtol=1e-4, atol=1e-6)
        assert device.layers[name].percentile(99.99) == pytest.approx(stats.percentile(99.99), rel=1e-4)
    for name, seen in host.attention.items():
        np.testing.assert_allclose(device.attention[name], seen, rtol=1e-4)
