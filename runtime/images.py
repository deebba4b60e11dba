"""Writing generated images: PNG with the generation's settings in its text chunks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin


def output_paths(out: Path, count: int) -> list[Path]:
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(count)]


def save_png(images: np.ndarray, out: Path, metadata: dict) -> list[Path]:
    """Save [B, H, W, 4] uint8 images; each file appears whole or not at all."""
    if out.suffix.lower() != ".png":
        raise ValueError(f"output must be a .png file, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        info.add_text(f"qiedge:{key}", str(value))
    paths = output_paths(out, len(images))
    for image, path in zip(images, paths):
        tmp = path.with_name(f".{path.name}.tmp")
        Image.fromarray(image, "RGBA").save(tmp, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    return paths
