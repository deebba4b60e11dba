"""`qiedge eval`: how well a model (or its artifacts) draws what the demo prompts ask for, and
how close two backends or precisions come to each other on the same prompts and seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qiedge.core.files import read_prompts
from qiedge.core.metrics import psnr, ssim
from qiedge.core.scenes import sample_scene

from .adherence import adherence
from .sampler import Request, generate, to_uint8

PROMPT_SETS = ("held-out", "train")


def prompt_set(name: str, count: int, seed: int = 0) -> list[str]:
    """`held-out`/`train` scenes drawn deterministically, or a file with one prompt per line."""
    if name in PROMPT_SETS:
        rng = np.random.default_rng([seed, PROMPT_SETS.index(name)])
        return [sample_scene(rng, name).prompt() for _ in range(count)]
    path = Path(name)
    if not path.is_file():
        raise ValueError(f"prompts must be {' or '.join(PROMPT_SETS)} or a file of prompts, got {name!r}")
    return read_prompts(path, "prompts file")[:count]


def render_all(runtime, prompts: list[str], size: int, seed: int, batch: int = 8, on_batch=None) -> np.ndarray:
    """uint8 images [N, size, size, 4], generated `batch` prompts at a time with seeds seed, seed+1, ..."""
    images = []
    for i in range(0, len(prompts), batch):
        request = Request(prompts[i : i + batch], width=size, height=size, seed=seed + i // batch)
        images.append(to_uint8(generate(request, runtime.facts, runtime.sessions)))
        if on_batch:
            on_batch(min(i + batch, len(prompts)), len(prompts))
    return np.concatenate(images)


def evaluate(runtime, prompts: list[str], size: int = 256, seed: int = 0, against=None, on_batch=None) -> dict:
    images = render_all(runtime, prompts, size, seed, on_batch=on_batch)
    report = {"prompts": len(prompts), "size": size, "seed": seed, "adherence": adherence(images, prompts)}
    if against is not None:
        other = render_all(against, prompts, size, seed)
        report["against"] = {
            "adherence": adherence(other, prompts),
            "psnr_db": psnr(images, other),
            "ssim": ssim(images, other),
        }
    return report
