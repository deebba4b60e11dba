"""`qiedge`: one entry point. Thin: parses, calls the library, prints one line per failure.

Nothing heavy is imported at module level, so `qiedge --help` is instant and the torch-free
commands stay torch-free.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def default_model_dir() -> Path:
    """The built-in tiny model, written once (deterministic weights) under $QIEDGE_HOME."""
    home = Path(os.environ.get("QIEDGE_HOME", Path.home() / ".cache" / "qiedge"))
    path = home / "models" / "tiny-seed0"
    if not (path / "model_index.json").is_file():
        from qiedge.reference_model import presets
        from qiedge.reference_model.model_dir import init_model_dir

        init_model_dir(presets.TINY, path, seed=0)
    return path


def _emit(args, payload: dict, text: str) -> None:
    print(json.dumps(payload, indent=2) if args.json else text)


def cmd_init(args) -> None:
    from qiedge.reference_model import presets
    from qiedge.reference_model.model_dir import init_model_dir

    path = init_model_dir(presets.get_preset(args.preset), args.out, seed=args.seed)
    _emit(args, {"model": str(path), "preset": args.preset, "seed": args.seed},
          f"wrote {args.preset} model (seed {args.seed}) to {path}")


def cmd_generate(args) -> None:
    import time

    from PIL import Image

    from qiedge.reference_model.model_dir import ModelDir
    from qiedge.reference_model.pipeline import Request, TorchPipeline, schedule_for, to_uint8
    from qiedge.runtime.images import save_png
    from qiedge.runtime.progress import step_progress

    request = Request(
        prompts=[args.prompt] * args.batch, width=args.width, height=args.height, steps=args.steps,
        seed=args.seed, cfg=args.cfg, negative_prompt=args.negative_prompt,
        images=[Image.open(p) for p in args.image], resolution=args.resolution,
    )
    request.validate()
    model = ModelDir.open(args.model or default_model_dir())
    start = time.perf_counter()
    pipeline = TorchPipeline(model)
    with step_progress("denoising", quiet=args.json) as on_step:
        images = to_uint8(pipeline(request, on_step=on_step))
    seconds = time.perf_counter() - start
    steps = len(schedule_for(model, (args.width // 16) * (args.height // 16), args.steps)) - 1
    metadata = {"prompt": args.prompt, "negative_prompt": args.negative_prompt or "", "seed": args.seed,
                "steps": steps, "cfg": args.cfg, "width": args.width, "height": args.height,
                "model": str(model.path), "model_hash": model.fingerprint()}
    outputs = save_png(images, Path(args.out), metadata)
    _emit(args, {**metadata, "images": [str(p) for p in outputs], "seconds": round(seconds, 3)},
          "\n".join(f"wrote {p}" for p in outputs) + f"  ({seconds:.2f} s)")


def cmd_inspect(args) -> None:
    from qiedge.reference_model import inspect, presets
    from qiedge.reference_model.model_dir import ModelDir

    if args.model:
        info = inspect.describe_model_dir(ModelDir.open(args.model), args.width, args.height)
    else:
        info = inspect.describe_preset(presets.get_preset(args.preset), args.width, args.height)
    lines = [f"{'component':<18} {'parameters':>15} {'fp32 GB':>9} {'fp16 GB':>9} {'int8 GB':>9}"]
    for name, c in info["components"].items():
        mem = c["memory_bytes"]
        lines.append(f"{name:<18} {c['parameters']:>15,} {mem['fp32'] / 1e9:>9.3f} {mem['fp16'] / 1e9:>9.3f} {mem['int8'] / 1e9:>9.3f}")
    r = info["resolution"]
    lines.append(f"{r['width']}x{r['height']}: latent grid {r['latent_grid']}, {r['image_tokens']} image tokens")
    _emit(args, info, "\n".join(lines))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qiedge", description="Qwen-Image-2 for phones, Macs and edge GPUs.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="write a model directory with deterministic random weights")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("generate", help="text-to-image, or editing with --image, on the torch reference")
    p.add_argument("prompt")
    p.add_argument("--model", help="model directory (default: the built-in tiny model)")
    p.add_argument("--image", action="append", default=[], help="condition image for editing (repeatable)")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--resolution", type=int, default=1024, help="condition images are resized to about this^2 px")
    p.add_argument("--steps", type=int, help="default: the model's distilled grid, else 40")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=1, help="images per prompt")
    p.add_argument("--cfg", type=float, default=1.0, help="guidance scale; > 1 needs --negative-prompt")
    p.add_argument("--negative-prompt")
    p.add_argument("--out", default="qiedge.png")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("inspect", help="components, parameters, memory per precision, token counts")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--preset", default="tiny")
    source.add_argument("--model")
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except Exception as e:  # one clear line per failure; the traceback only on request
        if args.debug:
            raise
        print(f"qiedge {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
