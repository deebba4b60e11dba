"""Stream the 7B transformer (stand-in weights) into INT8 or FP8 Q/DQ ONNX on this machine and
report wall time, peak RSS and size. Weight scales are real (computed from each streamed tensor);
activation scales are placeholders, since calibrating needs the checkpoint and its sampling runs.

    python bench/quantize_7b.py --format int8|fp8 [--keep DIR]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

from common import table


def main() -> None:
    from qiedge.export.run import export_artifacts
    from qiedge.quantization.onnx_qdq import QdqPlan
    from qiedge.quantization.recipe import Recipe
    from qiedge.quantization.scales import LayerQuant
    from qiedge.reference_model import presets

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", choices=("int8", "fp8"), default="int8")
    parser.add_argument("--keep", help="keep the artifacts here instead of deleting them")
    args = parser.parse_args()

    preset = presets.get_preset("qwen-image-2-7b")
    recipe = Recipe.load(args.format)
    config = preset.transformer
    linears = [
        f"transformer_blocks.{i}.{n}"
        for i in range(config.num_layers)
        for n in (
            "attn.to_q",
            "attn.to_k",
            "attn.to_v",
            "attn.to_out.0",
            "img_mlp.proj",
            "img_mlp.gate_layer",
            "img_mlp.out",
        )
    ]
    layers = recipe.quantized_layers(linears, config.num_layers)
    plan = QdqPlan(
        {n: LayerQuant(smooth=None, act_scale=4.0 / 127, granularity=recipe.weights) for n in layers}, args.format
    )
    record = {"format": args.format, "scales_hash": "placeholder-activation-scales", "recipe": {"name": recipe.name}}
    out = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="qiedge-7b-q-")) / "art"
    start = time.perf_counter()
    export_artifacts(
        out,
        precision="fp16",
        preset=preset,
        components=["transformer_prefix", "transformer_step"],
        passes=[plan.as_pass(record)],
        extra={"precision": args.format, "quantization": record},
    )
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    size = sum(f.stat().st_size for f in (out / "transformer").iterdir()) / 1e9
    print(
        table(
            ["what", "value"],
            [
                ["format", args.format],
                ["layers quantized", str(len(layers))],
                ["wall time", f"{seconds:.0f} s"],
                ["peak RSS", f"{peak:.2f} GB"],
                ["transformer/ size", f"{size:.2f} GB"],
            ],
        )
    )
    if not args.keep:
        shutil.rmtree(out.parent)


if __name__ == "__main__":
    main()
