"""Fixtures: one tiny model directory, loaded by qiedge and by diffusers."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from qiedge.reference_model import presets
from qiedge.reference_model.model_dir import ModelDir, init_model_dir

FP32_REL_L2 = 1e-5  # the project's bound for fp32 graphs vs the reference, per component


def rel_l2(actual, expected) -> float:
    actual, expected = (np.asarray(x, dtype=np.float64) for x in (actual, expected))
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return init_model_dir(presets.TINY, tmp_path_factory.mktemp("models") / "tiny", seed=7)


@pytest.fixture(scope="session")
def model(tiny_dir):
    return ModelDir.open(tiny_dir)


@pytest.fixture(scope="session")
def deeper_encoder_dir(tmp_path_factory):
    """The tiny model with a three-layer condition encoder whose deepstack features go into its
    first two layers: chunks of one layer each hand the features on (export/chunks.py)."""
    encoder = presets.TINY.encoder
    deeper = replace(
        encoder,
        text_config={**encoder.text_config, "num_hidden_layers": 3},
        vision_config={**encoder.vision_config, "deepstack_visual_indexes": [0, 1]},
    )
    preset = replace(presets.TINY, name="tiny-deeper-encoder", encoder=deeper)
    return init_model_dir(preset, tmp_path_factory.mktemp("models") / "deeper", seed=7)


@pytest.fixture(scope="session")
def diffusers_pipe(tiny_dir):
    diffusers = pytest.importorskip("diffusers")
    from diffusers.utils import logging as d_logging

    d_logging.set_verbosity_error()
    pipe = diffusers.QwenImage21Pipeline.from_pretrained(tiny_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def transformer(model):
    return model.load_transformer()


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@pytest.fixture(scope="session")
def onnx_fp32(tiny_dir, tmp_path_factory):
    from qiedge.export.run import export_artifacts

    out = tmp_path_factory.mktemp("artifacts") / "fp32"
    export_artifacts(out, precision="fp32", model=ModelDir.open(tiny_dir))
    return out
