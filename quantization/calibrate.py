"""Calibration on real sampling trajectories.

The reference pipeline runs the recipe's calibration prompts through the distilled grid and the
40-step CFG path while hooks on every Linear of the transformer record, at every step (and in
the prefix pass): each input channel's max |x|, the tensor's max |x|, and a fixed-size random
sample of |x| for percentile calibration. For FP8 attention, each block's attention records the
max |x| of what its two matmuls read: q and k each times sqrt(1/sqrt(head_dim)) (the softmax
scale split between them, as the exported graph does), and v. Same recipe and model, same
statistics.

The statistics depend on the model's files, the calibration set, the code and where the fp32
reference ran (the host, or which GPU), not on the rest of the recipe (every shipped recipe
calibrates on the same set), so they are kept on disk (`$QIEDGE_CACHE/calibrations`,
core/disk_cache.py): another recipe or `quantize` run of the same model reads them back, and so
does every `cuda` backend load after the first on the same GPU.
"""

from __future__ import annotations

import gc
import hashlib
import io
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from qiedge.core import disk_cache
from qiedge.reference_model.model_dir import ModelDir
from qiedge.reference_model.transformer import Attention
from qiedge.runtime.runner import open_runtime
from qiedge.runtime.sampler import Request, Sessions, generate
from torch import nn

from .recipe import Recipe

SAMPLES_PER_CALL = 256
# What the statistics are computed by: the pipeline, the reference model, the wrappers the
# backends run it through, and the hooks here.
CODE = ("qiedge.quantization", "qiedge.runtime", "qiedge.export", "qiedge.reference_model", "qiedge.core")
LIBRARIES = ("torch", "transformers", "numpy")


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
    attention: dict[str, list[float]] = field(default_factory=dict)  # module -> max |q s|, |k s|, |v|

    def digest(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self.layers):
            h.update(name.encode() + self.layers[name].channel_absmax.astype(np.float32).tobytes())
        for name in sorted(self.attention):
            h.update(name.encode() + np.asarray(self.attention[name], np.float32).tobytes())
        return h.hexdigest()

    def dumps(self) -> bytes:
        """The statistics as an .npz (no pickles); each layer's samples as one array."""
        arrays = {"settings": np.array(json.dumps(self.settings))}
        for name, stats in self.layers.items():
            arrays[f"layer/{name}/channel_absmax"] = stats.channel_absmax
            arrays[f"layer/{name}/absmax"] = np.array(stats.absmax)
            arrays[f"layer/{name}/samples"] = np.concatenate(stats.samples or [np.zeros(0, np.float32)])
        for name, seen in self.attention.items():
            arrays[f"attention/{name}"] = np.array(seen)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def loads(cls, data: bytes) -> Calibration:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            layers, attention = {}, {}
            for key in arrays.files:
                kind, _, rest = key.partition("/")
                if kind == "attention":
                    attention[rest] = arrays[key].tolist()
                elif kind == "layer" and rest.endswith("/absmax"):
                    name = rest.removesuffix("/absmax")
                    layers[name] = LayerStats(
                        arrays[f"layer/{name}/channel_absmax"],
                        float(arrays[key]),
                        [arrays[f"layer/{name}/samples"]],
                    )
            return cls(layers, json.loads(str(arrays["settings"])), attention)


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


@contextmanager
def recording_attention(transformer: nn.Module) -> Iterator[dict[str, list[float]]]:
    """Max |x| of each attention's matmul operands, recorded while the context is open."""
    found = {name: m for name, m in transformer.named_modules() if isinstance(m, Attention)}
    stats = {name: [0.0, 0.0, 0.0] for name in found}

    def wrap(module: Attention, seen: list[float]):
        attend = module.attend

        def recorded(q, k, v, mask):
            root = q.shape[-1] ** -0.25
            for i, x in enumerate((q * root, k * root, v)):
                seen[i] = max(seen[i], float(x.detach().abs().max()))
            return attend(q, k, v, mask)

        return recorded

    for name, module in found.items():
        module.attend = wrap(module, stats[name])  # an instance attribute over the class's method
    try:
        yield stats
    finally:
        for module in found.values():
            del module.attend


def calibrate(model_path, recipe: Recipe, log: Callable[[str], None] = print, device: str | None = None) -> Calibration:
    """The statistics of the recipe's calibration trajectories on `model_path`: recorded by hooks
    on the fp32 reference (on the host, or on `device` through the cuda backend's sessions), or
    read back from the cache where this model, set and code were calibrated before."""
    model, c = ModelDir.open(model_path), recipe.calibration_set
    prompts = c.prompt_list()
    name = disk_cache.key(
        disk_cache.environment(CODE, LIBRARIES),
        model.fingerprint(),
        prompts,
        [c.seed, c.size, list(c.trajectories), c.cfg, c.cfg_prompts, SAMPLES_PER_CALL],
        _arithmetic(device),
    )

    def record() -> bytes:
        log(f"calibrating on {len(prompts)} prompts ({', '.join(c.trajectories)})")
        data = _record(model, recipe, device).dumps()
        gc.collect()  # the fp32 reference's modules, in reference cycles, before the caller loads its own
        if device is not None and torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
        return data

    calibration = disk_cache.cached("calibrations", f"{name}.npz", record, Calibration.loads)
    if recipe.attention != "fp8":
        calibration.attention = {}
    return calibration


def _arithmetic(device: str | None):
    """What of the device the statistics depend on: the host's fp32 reference; a device's kind,
    and a GPU's name and whether its fp32 matmuls may round (TF32: precision "high")."""
    if device is None:
        return None
    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    return torch.cuda.get_device_name(device), torch.get_float32_matmul_precision()


def _record(model: ModelDir, recipe: Recipe, device: str | None) -> Calibration:
    facts, sessions, transformer = _reference(model, device)
    c = recipe.calibration_set
    with recording(transformer, c.seed) as layers, recording_attention(transformer) as attention:
        for request in calibration_requests(recipe):
            generate(request, facts, sessions)
    settings = {
        "prompts": len(c.prompt_list()),
        "seed": c.seed,
        "size": c.size,
        "trajectories": list(c.trajectories),
        "cfg": c.cfg,
        "cfg_prompts": c.cfg_prompts,
    }
    return Calibration(layers, settings, attention)


def _reference(model: ModelDir, device: str | None):
    """(facts, sessions, the transformer they run) of the fp32 reference: the torch backend's on
    the host, the cuda backend's on a device (where a 7B model calibrates in minutes, not hours)."""
    if device is None:
        runtime = open_runtime(model=model.path, backend="torch")
        return runtime.facts, runtime.sessions, runtime.backend.reference("transformer")
    from qiedge.core.artifacts import ModelFacts
    from qiedge.runtime.backends.cuda import CudaBackend

    backend = CudaBackend(model, device=device, compile=False, dtype=torch.float32)
    facts = ModelFacts.from_model_dir(model)
    sessions = Sessions(backend.prompt_encoder(facts), backend.load, arrays=backend.arrays)
    return facts, sessions, backend.reference("transformer")


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
