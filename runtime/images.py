"""Writing generated images: PNG with the generation's settings in its text chunks."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin


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
        handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(handle, "wb") as file:
                Image.fromarray(image, "RGBA").save(file, format="PNG", pnginfo=info)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return paths
