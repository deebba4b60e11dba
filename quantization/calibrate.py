"""Calibration on real sampling trajectories.

The reference pipeline runs the recipe's calibration prompts through the distilled grid and the
40-step CFG path while hooks on every Linear of the transformer record, at every step (and in
the prefix pass): each input channel's max |x|, the tensor's max |x|, and a fixed-size random
sample of |x| for percentile calibration. Same recipe and model, same statistics.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from qiedge.runtime.runner import open_runtime
from qiedge.runtime.sampler import Request, generate
from torch import nn

from .recipe import Recipe

SAMPLES_PER_CALL = 256


@dataclass
class LayerStats:
    channel_absmax: np.ndarray  # [in_features]
    absmax: float = 0.0
    samples: list[np.ndarray] = field(default_factory=list)

    def percentile(self, p: float) -> float:
        return float(np.percentile(np.concatenate(self.samples), p))


@dataclass
class Calibration:
    layers: dict[str, LayerStats]
    settings: dict

    def digest(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self.layers):
            h.update(name.encode() + self.layers[name].channel_absmax.astype(np.float32).tobytes())
        return h.hexdigest()


def linear_layers(transformer: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in transformer.named_modules() if isinstance(m, nn.Linear)}


def _hook(stats: LayerStats, rng: np.random.Generator):
    def record(module, args):
        x = args[0].detach().float().abs().reshape(-1, args[0].shape[-1])
        stats.channel_absmax = np.maximum(stats.channel_absmax, x.amax(0).cpu().numpy())
        stats.absmax = max(stats.absmax, float(x.max()))
        flat = x.reshape(-1)
        picks = torch.from_numpy(rng.integers(0, flat.numel(), SAMPLES_PER_CALL)).to(flat.device)
        stats.samples.append(flat[picks].cpu().numpy())

    return record


@contextmanager
def recording(transformer: nn.Module, seed: int) -> Iterator[dict[str, LayerStats]]:
    """Statistics of every Linear's inputs, recorded by hooks while the context is open (on
    whatever device the transformer runs)."""
    rng = np.random.default_rng(seed)
    linears = linear_layers(transformer)
    layers = {name: LayerStats(np.zeros(m.in_features, dtype=np.float32)) for name, m in linears.items()}
    handles = [m.register_forward_pre_hook(_hook(layers[n], rng)) for n, m in linears.items()]
    try:
        yield layers
    finally:
        for h in handles:
            h.remove()


def calibrate(model_path, recipe: Recipe, on_request=None) -> Calibration:
    """Run the calibration trajectories on the torch reference with recording hooks."""
    runtime = open_runtime(model=model_path, backend="torch")
    transformer = runtime.backend.reference("transformer")
    with recording(transformer, recipe.calibration_set.seed) as layers:
        for request in calibration_requests(recipe):
            generate(request, runtime.facts, runtime.sessions)
            if on_request:
                on_request()
    c = recipe.calibration_set
    return Calibration(
        layers,
        {
            "prompts": len(c.prompt_list()),
            "seed": c.seed,
            "size": c.size,
            "trajectories": list(c.trajectories),
            "cfg": c.cfg,
            "cfg_prompts": c.cfg_prompts,
        },
    )


def calibration_requests(recipe: Recipe) -> list[Request]:
    c = recipe.calibration_set
    prompts = c.prompt_list()
    requests = []
    if "distilled" in c.trajectories:
        requests += [
            Request(prompts[i : i + 4], width=c.size, height=c.size, seed=c.seed + i) for i in range(0, len(prompts), 4)
        ]
    if "cfg-40" in c.trajectories:
        requests += [
            Request([p], width=c.size, height=c.size, seed=c.seed + 1000 + i, steps=40, cfg=c.cfg, negative_prompt=" ")
            for i, p in enumerate(prompts[: c.cfg_prompts])
        ]
    return requests
