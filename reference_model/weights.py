"""safetensors I/O with strict, all-at-once checking. Never pickle.

Modules are built on the meta device and their tensors assigned straight from the files, so a
7B model never exists twice in memory, and a checkpoint that does not fit its config is refused
with every missing, unexpected and mis-shaped tensor named at once.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn


class WeightsMismatch(ValueError):
    pass


class WeightsError(ValueError):
    """A weights file or index that cannot be read as it claims: named, with what is wrong."""


def weight_files(folder: Path) -> list[Path]:
    """The component's safetensors files, sharded (via the index) or single."""
    index = sorted(folder.glob("*.safetensors.index.json"))
    if index:
        return [folder / s for s in _shards(index[0])]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise WeightsError(f"no *.safetensors weights in {folder}")
    return files


def _shards(index: Path) -> list[str]:
    """The shard files an index names, each a plain file name beside it (untrusted: no paths)."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise WeightsError(f"{index} is not a safetensors index ({type(e).__name__}: {e})") from None
    for shard in shards:
        if not isinstance(shard, str) or Path(shard).name != shard or shard in ("", ".", ".."):
            raise WeightsError(f"{index} names {shard!r}: shards must be files beside the index")
    return shards


@contextlib.contextmanager
def open_weights(path: Path, device: str = "cpu"):
    """safe_open, with a file it cannot read (truncated, corrupt header, absurd offsets) named.

    safetensors checks the header against the file's size before it maps anything, so a header
    claiming more than the file holds is refused without allocating it.
    """
    try:
        with safe_open(path, framework="pt", device=device) as f:
            yield _Named(f, path)
    except WeightsError:
        raise
    except Exception as e:
        raise WeightsError(f"{path} is not a readable safetensors file ({e or type(e).__name__})") from None


class _Named:
    """A safetensors handle whose per-tensor errors name the file and the tensor."""

    def __init__(self, handle, path: Path):
        self.handle, self.path = handle, path

    def keys(self) -> list[str]:
        return self.handle.keys()

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._call(key, lambda: self.handle.get_slice(key).get_shape()))

    def dtype(self, key: str) -> str:
        return str(self._call(key, lambda: self.handle.get_slice(key).get_dtype())).lower()

    def get_tensor(self, key: str) -> torch.Tensor:
        return self._call(key, lambda: self.handle.get_tensor(key))

    def _call(self, key: str, read):
        try:
            return read()
        except Exception as e:
            raise WeightsError(f"{self.path}: tensor {key} cannot be read ({e or type(e).__name__})") from None


def check_shapes(module: nn.Module, files: list[Path]) -> None:
    """Raise one WeightsMismatch listing every key and shape that does not fit the module."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    found = {}
    for path in files:
        with open_weights(path) as f:
            for key in f.keys():
                found[key] = f.shape(key)
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
        with open_weights(path, device) as f:
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
        with open_weights(path) as f:
            total += sum(torch.Size(f.shape(k)).numel() for k in f.keys())
    return total
