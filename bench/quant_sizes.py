"""Transformer size per precision, for the small and 7B presets: every Linear the recipe
quantizes at the format's width (INT4: 4 bits plus one fp16 scale per group), everything else
in fp16 (fp32 for the fp32 row). Counts from the meta device; nothing is allocated.

    python bench/quant_sizes.py [--group 64]
"""

from __future__ import annotations

import argparse

import torch
from common import table


def main() -> None:
    from qiedge.quantization.calibrate import linear_layers
    from qiedge.quantization.recipe import Recipe
    from qiedge.reference_model import presets
    from qiedge.reference_model.transformer import QwenImage2Transformer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", type=int, default=64, help="INT4 group size")
    args = parser.parse_args()
    recipe = Recipe.load("int8")
    rows = []
    for name in ("small", "qwen-image-2-7b"):
        config = presets.get_preset(name).transformer
        with torch.device("meta"):
            model = QwenImage2Transformer(config)
        layers = linear_layers(model)
        quantized = recipe.quantized_layers(list(layers), config.num_layers)
        q_params = sum(layers[n].weight.numel() for n in quantized)
        total = sum(p.numel() for p in model.parameters())
        rest = total - q_params
        int4 = q_params / 2 + 2 * q_params / args.group
        sizes = {
            "fp32": 4 * total,
            "fp16": 2 * total,
            "int8": q_params + 2 * rest,
            "fp8": q_params + 2 * rest,
            f"int4 (g{args.group})": int4 + 2 * rest,
        }
        rows.append(
            [name, f"{total / 1e6:,.0f}M", f"{100 * q_params / total:.0f}%"]
            + [f"{b / 1e9:.3f}" for b in sizes.values()]
        )
    print(table(["preset", "parameters", "quantized share", *[f"{k} GB" for k in sizes]], rows))


if __name__ == "__main__":
    main()
