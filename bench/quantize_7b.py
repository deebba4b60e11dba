"""Stream a 7B component (stand-in weights) into Q/DQ ONNX on this machine and report wall time,
peak RSS and size: the transformer in INT8 or FP8, or the condition encoder's weights alone in
INT4 or INT8. Weight scales are real (computed from each streamed tensor); the transformer's
activation scales are placeholders, since calibrating needs the checkpoint and its sampling runs
(the encoder, weight-only, has none).

    python bench/quantize_7b.py --format int8|fp8 [--keep DIR]
    python bench/quantize_7b.py --component condition_encoder --format int4|int8 [--keep DIR]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

from common import table

BLOCK_LINEARS = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "img_mlp.proj",
    "img_mlp.gate_layer",
    "img_mlp.out",
)
ENCODER_LINEARS = (
    *(f"self_attn.{p}_proj" for p in "qkvo"),
    *(f"mlp.{p}_proj" for p in ("gate", "up", "down")),
)


def transformer_plan(preset, fmt: str):
    from qiedge.quantization.onnx_qdq import QdqPlan
    from qiedge.quantization.recipe import Recipe
    from qiedge.quantization.scales import LayerQuant

    recipe, config = Recipe.load(fmt), preset.transformer
    linears = [f"transformer_blocks.{i}.{n}" for i in range(config.num_layers) for n in BLOCK_LINEARS]
    layers = recipe.quantized_layers(linears, config.num_layers)
    quant = LayerQuant(smooth=None, act_scale=4.0 / 127, granularity=recipe.weights)
    record = {"scales_hash": "placeholder-activation-scales", "recipe": {"name": recipe.name}}
    return QdqPlan(dict.fromkeys(layers, quant), fmt), record, ["transformer_prefix", "transformer_step"]


def encoder_plan(preset, fmt: str):
    from qiedge.quantization.onnx_qdq import QdqPlan, is_condition_encoder
    from qiedge.quantization.recipe import ENCODER_LAYERS, EncoderWeights
    from qiedge.quantization.scales import LayerQuant

    weights = EncoderWeights.named(fmt)
    layers = [
        f"{ENCODER_LAYERS}{i}.{n}"
        for i in range(preset.encoder.text_config["num_hidden_layers"])
        for n in ENCODER_LINEARS
    ]
    quant = LayerQuant(smooth=None, act_scale=None, granularity=weights.granularity)  # scales as each weight streams
    record = {"scales_hash": "computed-while-streaming", "recipe": {"name": f"encoder-{fmt}-weight-only"}}
    return QdqPlan(dict.fromkeys(layers, quant), fmt, is_condition_encoder), record, ["condition_encoder"]


def main() -> None:
    from qiedge.export.run import export_artifacts
    from qiedge.reference_model import presets

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--component", choices=("transformer", "condition_encoder"), default="transformer")
    parser.add_argument("--format", choices=("int8", "fp8", "int4"), default="int8")
    parser.add_argument("--keep", help="keep the artifacts here instead of deleting them")
    args = parser.parse_args()
    allowed = ("int8", "fp8") if args.component == "transformer" else ("int8", "int4")
    if args.format not in allowed:
        parser.error(f"--component {args.component} streams {' or '.join(allowed)}")

    preset = presets.get_preset("qwen-image-2-7b")
    make_plan = transformer_plan if args.component == "transformer" else encoder_plan
    plan, record, components = make_plan(preset, args.format)
    out = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="qiedge-7b-q-")) / "art"
    start = time.perf_counter()
    export_artifacts(
        out,
        precision="fp16",
        preset=preset,
        components=components,
        passes=[plan.as_pass({"format": args.format, **record})],
        extra={"precision": "fp16" if args.component == "condition_encoder" else args.format, "quantization": record},
    )
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    folder = out / ("transformer" if args.component == "transformer" else "condition_encoder")
    size = sum(f.stat().st_size for f in folder.iterdir()) / 1e9
    print(
        table(
            ["what", "value"],
            [
                ["component", args.component],
                ["format", args.format],
                ["layers quantized", str(len(plan.quants))],
                ["wall time", f"{seconds:.0f} s"],
                ["peak RSS", f"{peak:.2f} GB"],
                [f"{folder.name}/ size", f"{size:.2f} GB"],
            ],
        )
    )
    if not args.keep:
        shutil.rmtree(out.parent)


if __name__ == "__main__":
    main()
