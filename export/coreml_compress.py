"""Weight compression for Core ML packages with coremltools' own APIs (`ct.optimize.coreml`).

- int8: linear symmetric, per output channel;
- int4: linear symmetric, per block of 32 input channels;
- palettize4 / palettize6: k-means lookup tables per group of 16 output channels;
- mixed: 4-bit palettization, with the most sensitive layers (the INT8 recipe's
  `keep_high_precision`: embedders, modulation, first and last blocks, output layers) at 8 bits,
  as Apple's mixed-bit palettization does.

The transformer and the condition encoder are compressed (97% of the weights at 7B); the VAE
stays fp16: it is the most sensitive (its decoder fell to 15.5 dB with 4-bit palettes on the tiny
model, against 24 dB for the transformer's K/V) and, as Apple keeps its VAEs, the cheapest to keep.
"""

from __future__ import annotations

import fnmatch
import math

from qiedge.core.coreml import coremltools

MODES = ("int8", "int4", "palettize4", "palettize6", "mixed")
IOS18_ONLY = ("int4", "palettize4", "palettize6", "mixed")  # per-block and per-grouped-channel need iOS18
BLOCK = 32
GROUP = 16
# Weights smaller than this stay fp16: compressing them saves little and costs accuracy.
MIN_ELEMENTS = 2048
BITS = {"palettize4": 4, "palettize6": 6, "mixed": 4}


COMPRESSED = ("transformer", "text_encoder")  # the checkpoint folders whose weights are compressed


def mode_for(mode: str | None, weights: str) -> str | None:
    return mode if weights in COMPRESSED else None


def check(mode: str | None, deployment_target: str) -> None:
    if mode is not None and mode not in MODES:
        raise ValueError(f"compression {mode!r}: choose {', '.join(MODES)}")
    if mode in IOS18_ONLY and deployment_target == "iOS17":
        raise ValueError(f"--compress {mode} needs per-block or per-group compression: deploy to iOS18 or macOS15")


def _palettizer(bits: int):
    c = coremltools().optimize.coreml
    return c.OpPalettizerConfig(
        nbits=bits, mode="kmeans", granularity="per_grouped_channel", group_size=GROUP, weight_threshold=MIN_ELEMENTS
    )


def _quantizer(dtype: str):
    c = coremltools().optimize.coreml
    per_block = {"granularity": "per_block", "block_size": BLOCK} if dtype == "int4" else {"granularity": "per_channel"}
    return c.OpLinearQuantizerConfig(mode="linear_symmetric", dtype=dtype, weight_threshold=MIN_ELEMENTS, **per_block)


def weight_names(model) -> list[str]:
    """Names of the program's weight constants (those stored in the weights file)."""
    names = []
    for function in model.get_spec().mlProgram.functions.values():
        for block in function.block_specializations.values():
            names += [
                op.outputs[0].name
                for op in block.operations
                if op.type == "const" and op.attributes["val"].HasField("blobFileValue")
            ]
    return names


def matches(name: str, key_prefix: str, patterns: tuple[str, ...]) -> bool:
    """Whether a weight constant (named by coremltools after the wrapper's parameter, e.g.
    `p_wrapped_transformer_img_in_weight_to_fp16`) belongs to a layer a pattern names
    (checkpoint names such as `img_in` or `transformer_blocks.0.*`)."""
    stem = name.removeprefix("p_wrapped_" + key_prefix.replace(".", "_")).removesuffix("_to_fp16")
    return any(fnmatch.fnmatchcase(stem, p.replace(".", "_") + "_weight") for p in patterns)


def compress(model, mode: str | None, key_prefix: str = "", sensitive: tuple[str, ...] = ()):
    if mode is None:
        return model
    c = coremltools().optimize.coreml
    if mode in ("int8", "int4"):
        return c.linear_quantize_weights(model, c.OptimizationConfig(global_config=_quantizer(mode)))
    bits = BITS[mode]
    eight = {n: _palettizer(8) for n in weight_names(model) if mode == "mixed" and matches(n, key_prefix, sensitive)}
    return c.palettize_weights(model, c.OptimizationConfig(global_config=_palettizer(bits), op_name_configs=eight))


def record(mode: str | None, sensitive: tuple[str, ...] = ()) -> dict | None:
    if mode is None:
        return None
    return {
        "mode": mode,
        "block": BLOCK if mode == "int4" else None,
        "group": GROUP if mode in ("palettize4", "palettize6", "mixed") else None,
        "min_elements": MIN_ELEMENTS,
        "eight_bit_layers": list(sensitive) if mode == "mixed" else None,
    }


def stored_bytes(mode: str | None, float_bytes: int, key: str, shape: tuple[int, ...], sensitive=()) -> float:
    """Bytes one weight takes in a package: its values, scales and lookup tables (for planning
    chunks before anything is converted)."""
    elements, rows = math.prod(shape), shape[0]
    # coremltools leaves a weight uncompressed when its blocks or groups do not divide it.
    skipped = len(shape) < 2 or (mode == "int4" and shape[1] % BLOCK) or (mode in BITS and rows % GROUP)
    if mode is None or elements < MIN_ELEMENTS or skipped:
        return elements * float_bytes
    if mode == "int8":
        return elements + rows * float_bytes
    if mode == "int4":
        return elements / 2 + elements / BLOCK * float_bytes
    bits = 8 if mode == "mixed" and any(fnmatch.fnmatchcase(key, p + ".weight") for p in sensitive) else BITS[mode]
    return elements * bits / 8 + rows // GROUP * 2**bits * float_bytes
