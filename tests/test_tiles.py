"""The VAE decoder's tiles (core/tiles.py): the shapes a fixed-shape target exports are the shapes
the runtime's tiled decode (runtime/tiled_vae.py) asks of it."""

from __future__ import annotations

import numpy as np
import pytest
from qiedge.core.buckets import Size
from qiedge.core.tiles import Tiling, decoded_sizes, tiling_for
from qiedge.runtime.tiled_vae import TiledDecoder


class Recorder:
    """A decoder that draws nothing, and notes the size of every tile it is given."""

    def __init__(self):
        self.sizes = set()

    def run(self, feeds):
        _, _, height, width = feeds["latents"].shape
        self.sizes.add(Size(16 * width, 16 * height))
        return {"image": np.zeros((1, 3, 16 * height, 16 * width), dtype=np.float32)}


def test_tiles_of_2048_px_images():
    tiling = tiling_for(512)
    assert tiling == Tiling(32, 24)
    # 128 latents a side: tiles start at 0, 24, .. 120, the last one 8 latents wide.
    assert [(s.start, s.stop) for s in tiling.spans(128)] == [
        (0, 32),
        (24, 56),
        (48, 80),
        (72, 104),
        (96, 128),
        (120, 128),
    ]
    assert tiling.shapes(Size(2048, 2048)) == {Size(512, 512), Size(128, 512), Size(512, 128), Size(128, 128)}
    assert tiling.shapes(Size(512, 384)) == {Size(512, 384)}  # within one tile: decoded whole
    assert decoded_sizes((Size(384, 256), Size(1024, 1024)), 512) == (
        Size(256, 256), Size(256, 512), Size(384, 256), Size(512, 256), Size(512, 512),
    )  # fmt: skip
    assert decoded_sizes((Size(1024, 1024),), None) == (Size(1024, 1024),)


@pytest.mark.parametrize("pixels, size", [(128, Size(256, 192)), (128, Size(96, 224)), (512, Size(1024, 1536))])
def test_the_tiled_decode_asks_for_exactly_the_exported_shapes(pixels, size):
    tiling, recorder = tiling_for(pixels), Recorder()
    latents = np.zeros((1, 64, size.height // 16, size.width // 16), dtype=np.float32)
    image = TiledDecoder(recorder, tiling).run({"latents": latents})["image"]
    assert image.shape == (1, 3, size.height, size.width)
    assert recorder.sizes == tiling.shapes(size)


@pytest.mark.parametrize("pixels", [100, 64, 4096])
def test_tile_sizes_outside_the_range_are_refused(pixels):
    with pytest.raises(ValueError, match="a multiple of 64 px from 128 to 2048"):
        tiling_for(pixels)


def test_fixed_shape_backends_decode_in_the_exported_tiles_only():
    from types import SimpleNamespace

    from qiedge.runtime.runner import decoder_tiling

    tiled, whole = SimpleNamespace(path="art", vae_tiling=tiling_for(512)), SimpleNamespace(path="art", vae_tiling=None)
    assert decoder_tiling(tiled, None, "coreml") == decoder_tiling(tiled, tiling_for(512), "tensorrt") == Tiling(32, 24)
    assert decoder_tiling(whole, None, "coreml") is None
    # The other backends take any shape: tiles as asked, whatever the artifacts were exported for.
    assert decoder_tiling(tiled, None, "onnxruntime") is None
    assert decoder_tiling(whole, tiling_for(256), "onnxruntime") == Tiling(16, 12)
    with pytest.raises(ValueError, match="art was exported for 512 px tiles"):
        decoder_tiling(tiled, tiling_for(256), "coreml")
    with pytest.raises(ValueError, match=r"export with --vae-tile 256 for them \(not --static\), or decode whole"):
        decoder_tiling(whole, tiling_for(256), "tensorrt")


@pytest.mark.parametrize("tile", ["512", 100, 512.0])
def test_a_manifest_tile_that_is_no_tile_is_refused(tile):
    from pathlib import Path

    from qiedge.core.artifacts import ArtifactError, Artifacts

    artifacts = Artifacts(Path("art"), {"components": {}, "vae_tile": tile})
    with pytest.raises(ArtifactError, match=r"manifest.json: vae_tile .* is not a tile's side \(a multiple of 64 px"):
        print(artifacts.vae_tiling)
    assert Artifacts(Path("art"), {"components": {}, "vae_tile": 256}).vae_tiling == Tiling(16, 12)


@pytest.mark.parametrize(
    "options, needle",
    [
        ({"vae_tile": 100}, "--vae-tile 100: a multiple of 64 px from 128 to 2048"),
        (
            {"vae_tile": 512, "deployment_target": "iOS17", "prompt_lengths": (128,)},
            "--vae-tile needs a function per tile shape, which iOS17 packages cannot hold",
        ),
    ],
)
def test_core_ml_refuses_tiles_it_cannot_hold(options, needle):
    from qiedge.export.coreml import CoreMLOptions

    with pytest.raises(ValueError, match=needle):
        CoreMLOptions(**options).check()
