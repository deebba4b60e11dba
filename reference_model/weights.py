"""safetensors I/O with strict, all-at-once checking. Never pickle.

Modules are built on the meta device and their tensors assigned straight from the files, so a
7B model never exists twice in memory, and a checkpoint that does not fit its config is refused
with every missing, unexpected and mis-shaped tensor named at once.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn


class WeightsMismatch(ValueError):
    pass


def weight_files(folder: Path) -> list[Path]:
    """The component's safetensors files, sharded (via the index) or single."""
    index = sorted(folder.glob("*.safetensors.index.json"))
    if index:
        shards = sorted(set(json.loads(index[0].read_text())["weight_map"].values()))
        return [folder / s for s in shards]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {folder}")
    return files


def check_shapes(module: nn.Module, files: list[Path]) -> None:
    """Raise one WeightsMismatch listing every key and shape that does not fit the module."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    found = {}
    for path in files:
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                found[key] = tuple(f.get_slice(key).get_shape())
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    shapes = sorted(k for k in expected.keys() & found.keys() if expected[k] != found[k])
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(
                f"unexpected {len(unexpected)}: {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}"
            )
        if shapes:
            parts.append("shape mismatch: " + ", ".join(f"{k} {found[k]} vs {expected[k]}" for k in shapes[:8]))
        raise WeightsMismatch(f"weights in {files[0].parent} do not fit the config: " + "; ".join(parts))


def load_into(module: nn.Module, folder: Path, dtype: torch.dtype = torch.float32, device: str = "cpu") -> nn.Module:
    """Fill a (meta-device) module from a folder of safetensors, strictly; returns it in eval mode."""
    files = weight_files(folder)
    check_shapes(module, files)
    state = {}
    for path in files:
        with safe_open(path, framework="pt", device=device) as f:
            for key in f.keys():
                state[key] = f.get_tensor(key).to(dtype)
    module.load_state_dict(state, strict=True, assign=True)
    return module.to(device=device, dtype=dtype).eval()  # buffers computed from the config follow


def save(module: nn.Module, path: Path) -> None:
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))


def parameter_count(folder: Path) -> int:
    """Parameters stored in a component folder, read from the safetensors headers alone."""
    total = 0
    for path in weight_files(folder):
        with safe_open(path, framework="pt") as f:
            total += sum(torch.Size(f.get_slice(k).get_shape()).numel() for k in f.keys())
    return total
