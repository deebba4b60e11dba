"""Quantization recipes: versioned JSON files naming the format, the granularities, the
calibration, and the layers kept in high precision (name patterns over the transformer's
Linear layers; `{last}` is the last block's index), and optionally the condition encoder's
weight-only format."""

from __future__ import annotations

import fnmatch
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from qiedge.core.files import read_prompts

HERE = Path(__file__).resolve().parent
RECIPES = {
    "int8": HERE / "recipes" / "int8_smoothquant.json",
    "int8-dynamic": HERE / "recipes" / "int8_dynamic.json",
    "fp8": HERE / "recipes" / "fp8_e4m3.json",
    "fp8-attention": HERE / "recipes" / "fp8_e4m3_attention.json",
    "int4": HERE / "recipes" / "int4_weight_only.json",
}
FORMATS = ("int8", "fp8", "int4")
# The condition encoder's quantized Linear layers: checkpoint names, also transformers' module
# names and the exported graph's initializer names.
ENCODER_LAYERS = "model.language_model.layers."
QMAX = {"int8": 127.0, "fp8": 448.0, "int4": 7.0}  # symmetric int8/int4; float8 e4m3fn's largest finite value


def stored_bits(fmt: str, group_size: int | None) -> float:
    return 4 + 16 / group_size if fmt == "int4" else 8


@dataclass(frozen=True)
class CalibrationSet:
    prompts: str = "prompts/calibration.txt"  # relative to the quantization package, or absolute
    count: int = 16
    seed: int = 0
    size: int = 256
    trajectories: tuple[str, ...] = ("distilled", "cfg-40")
    cfg: float = 4.0
    cfg_prompts: int = 2

    def prompt_list(self) -> list[str]:
        path = Path(self.prompts)
        path = path if path.is_absolute() else HERE / path
        return read_prompts(path, "calibration prompts file")[: self.count]


@dataclass(frozen=True)
class EncoderWeights:
    """The condition encoder's language-model Linear layers, weights alone quantized: it runs once
    per image, so its memory matters far more than its speed (at 7B: 15.1 GB of fp16)."""

    format: str  # int8 (per output channel) or int4 (per group of input channels)
    group_size: int | None = None

    def __post_init__(self):
        int8 = self.format == "int8" and self.group_size is None
        if not int8 and not (self.format == "int4" and self.group_size in (32, 64, 128)):
            raise ValueError(
                "encoder weights are int8 (per channel, no group size) or int4 with group_size 32, 64 or 128"
            )

    @property
    def granularity(self) -> str:
        return f"group:{self.group_size}" if self.group_size else "per-channel"

    @property
    def bits(self) -> float:
        """Stored bits per weight, fp16 scales included (per-channel ones left out: a row each)."""
        return stored_bits(self.format, self.group_size)

    @classmethod
    def named(cls, format: str) -> EncoderWeights:
        """The `--encoder-weights` choices: int8 per channel, int4 in groups of 64 (as the INT4 recipe)."""
        return cls(format, 64 if format == "int4" else None)


@dataclass(frozen=True)
class Recipe:
    name: str
    format: str
    weights: str = "per-channel"  # or per-tensor, or per-group (int4)
    # per-tensor (static, calibrated), dynamic (int8: per tensor at run time, as ONNX Runtime's
    # DynamicQuantizeLinear does), or none (int4: weight-only)
    activations: str = "per-tensor"
    group_size: int | None = None  # int4: 32, 64 or 128 input channels per scale
    calibration: str = "max"  # or "percentile:P"
    smoothquant_alpha: float | None = None
    attention: str = "high"  # or fp8: Q, K, V and the probabilities in TensorRT's fused FP8 attention pattern
    keep_high_precision: tuple[str, ...] = ()
    calibration_set: CalibrationSet = field(default_factory=CalibrationSet)
    encoder: EncoderWeights | None = None
    version: int = 1

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"recipe format {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.format == "int4":
            if self.weights != "per-group" or self.activations != "none" or self.group_size not in (32, 64, 128):
                raise ValueError("int4 is weight-only, per-group with group_size 32, 64 or 128")
        elif self.weights not in ("per-channel", "per-tensor") or self.activations not in ("per-tensor", "dynamic"):
            raise ValueError("int8/fp8 weights are per-channel or per-tensor; activations per-tensor or dynamic")
        if self.activations == "dynamic" and (self.format != "int8" or self.smoothquant_alpha is not None):
            raise ValueError("dynamic activations are int8 without SmoothQuant (nothing is calibrated)")
        if self.attention not in ("high", "fp8") or (self.attention == "fp8" and self.format != "fp8"):
            raise ValueError(f"attention is high, or fp8 in an fp8 recipe; got {self.attention} in {self.format}")
        if self.calibration != "max" and not self.calibration.startswith("percentile:"):
            raise ValueError(f"calibration must be max or percentile:P, got {self.calibration!r}")

    @classmethod
    def load(cls, path_or_format: str) -> Recipe:
        path = RECIPES.get(path_or_format, Path(path_or_format))
        if not path.is_file():
            raise ValueError(f"no recipe {path_or_format!r}: give {', '.join(RECIPES)} or a recipe JSON file")
        data = json.loads(path.read_text())
        try:
            data["keep_high_precision"] = tuple(data.get("keep_high_precision", ()))
            calib = data.get("calibration_set", {})
            data["calibration_set"] = CalibrationSet(**{**calib, "trajectories": tuple(calib.get("trajectories", ()))})
            if data.get("encoder") is not None:
                data["encoder"] = EncoderWeights(**data["encoder"])
            return cls(**data)
        except TypeError as e:  # a field that is not one, or a section that is not an object
            raise ValueError(f"recipe {path}: {e}") from None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @property
    def bits(self) -> float:
        """Stored bits per quantized transformer weight, fp16 scales included (per group for int4)."""
        return stored_bits(self.format, self.group_size)

    @property
    def calibrated(self) -> bool:
        """Whether activation ranges are calibrated (static scales), so calibration must run."""
        return self.activations == "per-tensor"

    @property
    def percentile(self) -> float | None:
        return float(self.calibration.split(":")[1]) if self.calibration.startswith("percentile:") else None

    def quantized_layers(self, layers: list[str], num_blocks: int) -> list[str]:
        """The Linear layers this recipe quantizes: all but those matching a keep pattern."""
        patterns = [p.replace("{last}", str(num_blocks - 1)) for p in self.keep_high_precision]
        return [name for name in layers if not any(fnmatch.fnmatchcase(name, p) for p in patterns)]

    def quantized_attention(self, num_blocks: int) -> list[str]:
        """The attention modules (`transformer_blocks.<i>.attn`) in FP8, by the same keep patterns."""
        if self.attention != "fp8":
            return []
        return self.quantized_layers([f"transformer_blocks.{i}.attn" for i in range(num_blocks)], num_blocks)

    def keeping(self, extra: list[str]) -> Recipe:
        return replace(self, keep_high_precision=self.keep_high_precision + tuple(extra))
