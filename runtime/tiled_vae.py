"""The VAE decoder in overlapping tiles, blended as diffusers' `enable_tiling()` blends them
(`AutoencoderKLQwenImage21.tiled_decode`), so a large image needs one tile's activations at a time.

The tiles are core/tiles.py's; each decoded tile is blended linearly into the one above and the
one to its left over the overlap, then cropped to the stride. The decoder graph clamps each tile
to [-1, 1] before the blend, diffusers after it: the two differ only where an overlap's value
lies outside [-1, 1] in one tile and not in the other.
"""

from __future__ import annotations

import numpy as np
from qiedge.core.tiles import Tiling
from qiedge.core.units import PIXELS_PER_TOKEN

from .arrays import HOST, Arrays


class TiledDecoder:
    """A `vae_decoder` session that decodes latents larger than one tile tile by tile, in the
    session's own arrays (runtime/arrays.py): NumPy, or a GPU backend's device tensors."""

    def __init__(self, session, tiling: Tiling, arrays: Arrays = HOST):
        self.session, self.tiling, self.arrays = session, tiling, arrays

    def run(self, feeds: dict) -> dict:
        latents = feeds["latents"]
        _, _, height, width = latents.shape
        tile, stride = self.tiling.tile, self.tiling.stride
        if self.tiling.fits(height, width):
            return self.session.run(feeds)
        columns = self.tiling.spans(width)
        rows = [[self._decode(latents[:, :, i, j]) for j in columns] for i in self.tiling.spans(height)]
        blend, keep = PIXELS_PER_TOKEN * (tile - stride), PIXELS_PER_TOKEN * stride
        out_rows = []
        for i, row in enumerate(rows):
            kept = []
            for j, decoded in enumerate(row):
                if i > 0:
                    decoded = self._blend(rows[i - 1][j], decoded, blend, axis=2)
                if j > 0:
                    decoded = self._blend(row[j - 1], decoded, blend, axis=3)
                row[j] = decoded
                kept.append(decoded[:, :, :keep, :keep])
            out_rows.append(self.arrays.concat(kept, axis=3))
        image = self.arrays.concat(out_rows, axis=2)
        return {"image": image[:, :, : height * PIXELS_PER_TOKEN, : width * PIXELS_PER_TOKEN]}

    def _decode(self, latents):
        return self.session.run({"latents": latents})["image"]  # every backend's sessions take views

    def _blend(self, before, tile, extent: int, axis: int):
        """`tile` with its first `extent` rows (axis 2) or columns (axis 3) faded in from the end
        of `before`: diffusers' blend_v / blend_h, weights y / extent in float32."""
        extent = min(before.shape[axis], tile.shape[axis], extent)
        if extent == 0:
            return tile
        shape = [1, 1, 1, 1]
        shape[axis] = extent
        ramp = np.arange(extent, dtype=np.float64) / extent  # Python floats there, rounded to float32 per term
        fade_in, fade_out = (self.arrays.put(w.astype(np.float32).reshape(shape)) for w in (ramp, 1 - ramp))
        head, rest = _span(tile, axis, 0, extent), _span(tile, axis, extent, None)
        tail = _span(before, axis, before.shape[axis] - extent, None)
        return self.arrays.concat([tail * fade_out + head * fade_in, rest], axis=axis)


def _span(value, axis: int, start: int, stop: int | None):
    index = [slice(None)] * 4
    index[axis] = slice(start, stop)
    return value[tuple(index)]
