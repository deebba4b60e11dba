"""Does an image show what its demo prompt asks for? Plain image analysis, no neural network.

For each image: the background is the palette color nearest the border's median; each shape's
color is present if enough pixels are nearest to it, and its position is the named position
nearest to those pixels' centroid (scattered pixels, as noise has, are no shape); a word is
present if its color covers enough pixels, most of them in the middle band.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from qiedge.core.scenes import COLORS, POSITIONS, Scene, parse_prompt

PALETTE = np.array(list(COLORS.values()), dtype=np.float32)
NAMES = list(COLORS)
MIN_SHAPE_SHARE = 0.02  # of the image's pixels
MIN_WORD_SHARE = 0.005
COMPACT = 0.8  # a shape: this share of its color's pixels within a quarter side of their centroid


def nearest_colors(rgb: np.ndarray) -> np.ndarray:
    """Index of the nearest palette color for every pixel of [..., 3]."""
    d = ((rgb[..., None, :].astype(np.float32) - PALETTE) ** 2).sum(-1)
    return d.argmin(-1)


def check(image: np.ndarray, scene: Scene) -> dict[str, bool]:
    """Attribute -> passed, for one RGBA uint8 image [H, W, 4]."""
    rgb = image[..., :3]
    size = rgb.shape[0] * rgb.shape[1]
    labels = nearest_colors(rgb)
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    results = {"background": NAMES[np.bincount(border, minlength=len(NAMES)).argmax()] == scene.background}
    for i, shape in enumerate(scene.shapes):
        ys, xs = np.nonzero(labels == NAMES.index(shape.color))
        points = np.stack([xs / rgb.shape[1], ys / rgb.shape[0]], axis=1)
        centroid = points.mean(0) if len(points) else np.zeros(2)
        compact = (
            len(points) >= MIN_SHAPE_SHARE * size
            and np.mean(np.linalg.norm(points - centroid, axis=1) < 0.25) >= COMPACT
        )
        results[f"shape{i}_color"] = bool(compact)
        nearest = min(POSITIONS, key=lambda p: np.sum((np.array(POSITIONS[p]) - centroid) ** 2))
        results[f"shape{i}_position"] = bool(compact) and nearest == shape.position
    if scene.word:
        ys, _ = np.nonzero(labels == NAMES.index(scene.word[1]))
        in_band = np.mean(np.abs(ys / rgb.shape[0] - 0.5) < 0.15) if len(ys) else 0.0
        results["word"] = len(ys) >= MIN_WORD_SHARE * size and in_band >= COMPACT
    return results


def adherence(images: np.ndarray, prompts: list[str]) -> dict:
    """Share of checks passed, per attribute and overall, over images [N, H, W, 4] uint8."""
    per_attribute = defaultdict(list)
    for image, prompt in zip(images, prompts):
        for name, passed in check(image, parse_prompt(prompt)).items():
            per_attribute[name.replace("shape0_", "shape_").replace("shape1_", "shape_")].append(passed)
    scores = {name: float(np.mean(v)) for name, v in per_attribute.items()}
    scores["overall"] = float(np.mean([p for v in per_attribute.values() for p in v]))
    return scores
