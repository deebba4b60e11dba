"""Writing generated images: PNG with the generation's settings in its text chunks."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin
from qiedge.core.files import sweep_stale, write_atomic

MAX_INPUT_PIXELS = 8192 * 8192  # a condition image's size on disk, checked before it is decoded


def open_condition(path: Path) -> Image.Image:
    """A condition image, decoded whole now: its size is checked from the header first, and a
    file Pillow cannot decode (truncated, corrupt, not an image) is refused naming it."""
    try:
        image = Image.open(path)
        if image.width * image.height > MAX_INPUT_PIXELS:
            raise ValueError(
                f"condition image {path} is {image.width}x{image.height}, over "
                f"{MAX_INPUT_PIXELS // 10**6} megapixels: downscale it first"
            )
        image.load()
    except ValueError:
        raise
    except Exception as e:  # Pillow raises OSError, SyntaxError, struct errors, ... on bad files
        raise ValueError(f"condition image {path} cannot be read ({type(e).__name__}: {e})") from None
    return image


def output_paths(out: Path, count: int) -> list[Path]:
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(count)]


def check_output(out: Path, count: int) -> list[Path]:
    """The files a run of `count` images will write, refused now (before any work) if they cannot be."""
    if out.suffix.lower() != ".png":
        raise ValueError(f"output must be a .png file, got {out}")
    if not out.parent.is_dir():
        raise ValueError(f"output folder {out.parent} does not exist")
    paths = output_paths(out, count)
    for path in paths:
        if path.is_dir():
            raise ValueError(f"output {path} is a directory")
    return paths


def save_png(images: np.ndarray, out: Path, metadata: dict) -> list[Path]:
    """Save [B, H, W, 4] uint8 images; each file appears whole or not at all, and runs writing
    the same path at once each publish a whole image of their own (the last one stays)."""
    paths = check_output(out, len(images))
    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        info.add_text(f"qiedge:{key}", str(value))
    for image, path in zip(images, paths):
        sweep_stale(path)
        encoded = io.BytesIO()
        Image.fromarray(image, "RGBA").save(encoded, format="PNG", pnginfo=info)
        write_atomic(path, encoded.getvalue())
    return paths
