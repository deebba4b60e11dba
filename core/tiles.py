"""The VAE decoder's tiles, cut as diffusers' `enable_tiling()` cuts them: a tile starts every
`stride` latent rows and columns and spans `tile` of them, or what is left at the edge.

Torch-free: the runtime decodes by these tiles (runtime/tiled_vae.py), and the fixed-shape
targets export the decoder for the tiles' shapes rather than the whole image's (Core ML's
functions, TensorRT's profile), so a phone or an edge GPU holds one tile's activations at a time.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from .buckets import Size
from .units import PIXELS_PER_TOKEN


@dataclass(frozen=True)
class Tiling:
    tile: int  # latent rows and columns per tile
    stride: int  # latent rows and columns between tile starts

    def __post_init__(self):
        if not 0 < self.stride <= self.tile:
            raise ValueError(f"VAE tiles: stride {self.stride} must be in 1..{self.tile} (the tile)")

    @property
    def pixels(self) -> int:
        return self.tile * PIXELS_PER_TOKEN

    def fits(self, height: int, width: int) -> bool:
        """Whether latents of this grid decode whole, as one tile."""
        return height <= self.tile and width <= self.tile

    def spans(self, length: int) -> list[slice]:
        """The tiles along a side of `length` latents (of a grid that does not fit one tile)."""
        return [slice(start, min(start + self.tile, length)) for start in range(0, length, self.stride)]

    def shapes(self, size: Size) -> set[Size]:
        """The sizes the decoder sees decoding an image of `size`: its own if it fits one tile,
        else each tile's (the edge tiles are smaller)."""
        height, width = size.height // PIXELS_PER_TOKEN, size.width // PIXELS_PER_TOKEN
        if self.fits(height, width):
            return {size}
        return {
            Size(PIXELS_PER_TOKEN * (w.stop - w.start), PIXELS_PER_TOKEN * (h.stop - h.start))
            for h, w in itertools.product(self.spans(height), self.spans(width))
        }


def tiling_for(pixels: int) -> Tiling:
    """Tiles of `pixels` a side, a quarter of them overlapping (diffusers' 256 / 192 proportion)."""
    if pixels % 64 or not 128 <= pixels <= 2048:
        raise ValueError(f"--vae-tile {pixels}: a multiple of 64 px from 128 to 2048")
    tile = pixels // PIXELS_PER_TOKEN
    return Tiling(tile, tile * 3 // 4)


def decoded_sizes(sizes, pixels: int | None) -> tuple[Size, ...]:
    """The sizes the VAE decoder sees drawing images of `sizes`: theirs, or with tiles of `pixels`
    a side, the tiles' (an image within one tile still decodes whole)."""
    if pixels is None:
        return tuple(sizes)
    tiling = tiling_for(pixels)
    return tuple(sorted(set().union(*(tiling.shapes(s) for s in sizes))))
