"""`qiedge`: one entry point. Thin: parses, calls the library, prints one line per failure.

Nothing heavy is imported at module level, so `qiedge --help` is instant and the torch-free
commands stay torch-free.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def default_model_dir() -> Path:
    from qiedge.reference_model.model_dir import demo_model_dir

    return demo_model_dir()


def _emit(args, payload: dict, text: str) -> None:
    print(json.dumps(payload, indent=2) if args.json else text)


def _announce(args, runtime) -> None:
    """The first line says which path runs the model and why; warnings follow it, once."""
    if not args.json:
        print(f"backend {runtime.choice.backend}: {runtime.choice.reason}", file=sys.stderr)
    for warning in runtime.warnings:
        print(f"warning: {warning}", file=sys.stderr)


def cmd_init(args) -> None:
    from qiedge.reference_model import presets
    from qiedge.reference_model.model_dir import init_model_dir

    path = init_model_dir(presets.get_preset(args.preset), args.out, seed=args.seed)
    _emit(
        args,
        {"model": str(path), "preset": args.preset, "seed": args.seed},
        f"wrote {args.preset} model (seed {args.seed}) to {path}",
    )


def cmd_generate(args) -> None:
    import time

    from PIL import Image
    from qiedge.runtime.images import save_png
    from qiedge.runtime.progress import step_progress
    from qiedge.runtime.runner import open_runtime
    from qiedge.runtime.sampler import PIXELS_PER_TOKEN, Request, generate, schedule_for, to_uint8

    request = Request(
        prompts=[args.prompt] * args.batch,
        width=args.width,
        height=args.height,
        steps=args.steps,
        seed=args.seed,
        cfg=args.cfg,
        negative_prompt=args.negative_prompt,
        images=[Image.open(p) for p in args.image],
        resolution=args.resolution,
    )
    request.validate()
    model = args.model or (None if args.artifacts else default_model_dir())
    start = time.perf_counter()
    runtime = open_runtime(
        model=model,
        artifacts=args.artifacts,
        backend=args.backend,
        encoder_backend=args.encoder_backend,
        threads=args.threads,
        request=request,
    )
    _announce(args, runtime)
    with step_progress("denoising", quiet=args.json) as on_step:
        images = to_uint8(generate(request, runtime.facts, runtime.sessions, on_step=on_step))
    seconds = time.perf_counter() - start
    tokens = (args.width // PIXELS_PER_TOKEN) * (args.height // PIXELS_PER_TOKEN)
    metadata = {
        "prompt": args.prompt,
        "negative_prompt": args.negative_prompt or "",
        "seed": args.seed,
        "steps": len(schedule_for(runtime.facts, tokens, args.steps)) - 1,
        "cfg": args.cfg,
        "width": args.width,
        "height": args.height,
        "model": runtime.source,
        "model_hash": runtime.source_hash,
    }
    outputs = save_png(images, Path(args.out), metadata)
    _emit(
        args,
        {
            **metadata,
            "backend": runtime.choice.backend,
            "backend_reason": runtime.choice.reason,
            "images": [str(p) for p in outputs],
            "seconds": round(seconds, 3),
        },
        "\n".join(f"wrote {p}" for p in outputs) + f"  ({seconds:.2f} s)",
    )


def cmd_export(args) -> None:
    from qiedge.reference_model import presets
    from qiedge.reference_model.model_dir import ModelDir

    if args.target != "onnx":
        raise ValueError(f"target {args.target} is not built yet; onnx is")
    if bool(args.model) == bool(args.preset):
        raise ValueError("export needs exactly one of --model DIR or --preset P")
    from qiedge.export.run import export_onnx

    model = ModelDir.open(args.model) if args.model else None
    preset = presets.get_preset(args.preset) if args.preset else None
    components = args.components.split(",") if args.components else None

    def report(name, seconds):
        return args.json or print(f"exported {name} in {seconds:.1f} s", file=sys.stderr)

    manifest = export_onnx(
        args.out, args.precision, model=model, preset=preset, seed=args.seed, components=components, on_component=report
    )
    if model is not None and not args.no_parity:
        manifest = _record_parity(Path(args.out), model.path)
    failed = [n for n, c in manifest["components"].items() if c["parity"] and not c["parity"]["passed"]]
    _emit(args, manifest, f"wrote {args.out} ({', '.join(manifest['components'])})")
    if failed:
        raise ValueError(f"exported, but parity misses its threshold for: {', '.join(failed)} (see manifest.json)")


def _record_parity(out: Path, model: Path) -> dict:
    """Measure each component against the reference and write the figures into the manifest."""
    from qiedge.parity_tests.checks import run_parity
    from qiedge.runtime.artifacts import update_manifest

    report = run_parity(out, model, end_to_end=False)

    def record(manifest):
        for name, result in report["components"].items():
            manifest["components"][name]["parity"] = {
                "reference": "torch fp32",
                "threshold_rel_l2": result["threshold_rel_l2"],
                "worst_rel_l2": result["worst_rel_l2"],
                "cases": len(result["cases"]),
                "passed": result["passed"],
            }

    return update_manifest(out, record)


def cmd_parity(args) -> None:
    from qiedge.parity_tests.checks import run_parity

    report = run_parity(args.artifacts, args.model, end_to_end=not args.no_end_to_end)
    if args.json:
        text = json.dumps(report, indent=2)
        print(text) if args.json == "-" else Path(args.json).write_text(text + "\n")
    lines = [f"{'component':<20} {'worst rel L2':>13} {'bound':>8}  result"]
    for name, c in report["components"].items():
        lines.append(
            f"{name:<20} {c['worst_rel_l2']:>13.2e} {c['threshold_rel_l2']:>8.0e}  {'ok' if c['passed'] else 'FAIL'}"
        )
    for c in report.get("end_to_end", {}).get("cases", []):
        lines.append(f"end to end {c['case']:<24} PSNR {c['psnr_db']:>6.1f} dB  rel L2 {c['rel_l2']:.2e}")
    if args.json != "-":
        print("\n".join(lines))
    if not report["passed"]:
        raise ValueError("parity failed: " + "; ".join(report["failures"]))


def cmd_eval(args) -> None:
    from qiedge.runtime.evaluate import evaluate, prompt_set
    from qiedge.runtime.progress import step_progress
    from qiedge.runtime.runner import open_runtime
    from qiedge.runtime.sampler import Request

    model = args.model or (None if args.artifacts else default_model_dir())
    prompts = prompt_set(args.prompts, args.count, args.seed)
    request = Request(prompts, width=args.size, height=args.size, seed=args.seed)  # the whole job, for auto
    runtime = open_runtime(
        model=model, artifacts=args.artifacts, backend=args.backend, threads=args.threads, request=request
    )
    _announce(args, runtime)
    against = None
    if args.against_model or args.against_artifacts:
        against = open_runtime(
            model=args.against_model,
            artifacts=args.against_artifacts,
            backend=args.against_backend,
            threads=args.threads,
            request=request,
        )
    with step_progress("generating", quiet=args.json) as on_batch:
        report = evaluate(runtime, prompts, args.size, args.seed, against, on_batch=on_batch)
    report.update(source=runtime.source, prompt_set=args.prompts)
    a = report["adherence"]
    lines = [f"adherence on {len(prompts)} {args.prompts} prompts at {args.size}px: overall {100 * a['overall']:.1f}%"]
    lines += [f"  {name:<16} {100 * v:.1f}%" for name, v in a.items() if name != "overall"]
    if against is not None:
        b = report["against"]
        lines.append(
            f"against {against.source}: overall {100 * b['adherence']['overall']:.1f}%, "
            f"PSNR {b['psnr_db']:.1f} dB, SSIM {b['ssim']:.4f}"
        )
    _emit(args, report, "\n".join(lines))


def cmd_quantize(args) -> None:
    from dataclasses import replace

    from qiedge.quantization.recipe import Recipe
    from qiedge.quantization.run import quantize

    recipe = Recipe.load(args.recipe or args.format)
    if recipe.format != args.format:
        raise ValueError(f"recipe {recipe.name} is {recipe.format}, not {args.format}")
    if args.calib_prompts:
        recipe = replace(
            recipe, calibration_set=replace(recipe.calibration_set, prompts=str(Path(args.calib_prompts).resolve()))
        )
    log = (lambda message: None) if args.json else (lambda message: print(message, file=sys.stderr))
    record = quantize(
        args.model or default_model_dir(),
        recipe,
        args.out,
        report_dir=args.report,
        target_psnr=args.target_psnr,
        log=log,
    )
    a = record["accuracy"]
    adherence = (
        "n/a" if a["adherence"] is None else f"{100 * a['adherence']:.1f}% (fp32 {100 * a['fp32_adherence']:.1f}%)"
    )
    _emit(
        args,
        record,
        f"wrote {args.out}: {len(record['layers_quantized'])} layers {record['format']}, "
        f"min step cosine {min(s['cosine_min'] for s in a['per_step']):.4f}, "
        f"PSNR {a['psnr_db']:.1f} dB, adherence {adherence}",
    )


def cmd_inspect(args) -> None:
    if args.hardware:
        return _inspect_hardware(args)
    from qiedge.reference_model import inspect, presets
    from qiedge.reference_model.model_dir import ModelDir

    if args.model:
        info = inspect.describe_model_dir(ModelDir.open(args.model), args.width, args.height)
    else:
        info = inspect.describe_preset(presets.get_preset(args.preset), args.width, args.height)
    lines = [f"{'component':<18} {'parameters':>15} {'fp32 GB':>9} {'fp16 GB':>9} {'int8 GB':>9}"]
    for name, c in info["components"].items():
        mem = c["memory_bytes"]
        gigabytes = " ".join(f"{mem[p] / 1e9:>9.3f}" for p in ("fp32", "fp16", "int8"))
        lines.append(f"{name:<18} {c['parameters']:>15,} {gigabytes}")
    r = info["resolution"]
    lines.append(f"{r['width']}x{r['height']}: latent grid {r['latent_grid']}, {r['image_tokens']} image tokens")
    _emit(args, info, "\n".join(lines))


def _inspect_hardware(args) -> None:
    from qiedge.runtime.hardware import report

    info = report()
    cpu, t, ort, a = info["cpu"], info["torch"], info["onnxruntime"], info["auto"]
    lines = [
        f"cpu          {cpu['model']} ({cpu['arch']}, {cpu['cores']} cores, {cpu['vector_isa']})",
        f"features     {' '.join(cpu['features']) or 'none detected'}",
        f"bf16         {'native (' + cpu['bf16'] + ')' if cpu['bf16'] else 'emulated'}",
        f"int8 dot     {'native (' + cpu['int8_dot'] + ')' if cpu['int8_dot'] else 'not native'}",
    ]
    if t:
        lines.append(
            f"torch        {t['version']}: ATen {t['aten_capability']}; AMX {_yes(t['amx'])}, "
            f"AVX512-BF16 {_yes(t['avx512_bf16'])}, VNNI {_yes(t['vnni'])}"
        )
    lines.append(f"onnxruntime  {ort['version']}: {ort['int8']}")
    lines.append(f"auto         {a['backend']} ({a['reason']}); jobs under {a['below_flop']:.0e} FLOP: {a['below']}")
    _emit(args, info, "\n".join(lines))


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def build_parser() -> argparse.ArgumentParser:
    from qiedge.runtime.auto import BACKENDS  # stdlib only: --help stays instant

    parser = argparse.ArgumentParser(prog="qiedge", description="Qwen-Image-2 for phones, Macs and edge GPUs.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="write a model directory with deterministic random weights")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("generate", help="text-to-image, or editing with --image")
    p.add_argument("prompt")
    p.add_argument("--model", help="model directory (default: the built-in demo model, unless --artifacts)")
    p.add_argument("--artifacts", help="exported artifacts directory")
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="auto (default): onnxruntime with --artifacts, else the fastest torch path for this CPU "
        "(torch-bf16 where bf16 is native, torch-compile where it is emulated, eager torch for small jobs)",
    )
    p.add_argument(
        "--encoder-backend",
        choices=("torch", "onnxruntime"),
        help="run the condition encoder elsewhere (editing needs torch: the vision tower is not exported)",
    )
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads")
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

    p = sub.add_parser("export", help="export every component to an artifacts directory")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--model", help="model directory (weights streamed from its safetensors)")
    source.add_argument("--preset", help="a preset with deterministic stand-in weights, e.g. qwen-image-2-7b")
    p.add_argument("--target", choices=("onnx", "coreml", "tensorrt"), default="onnx")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    p.add_argument("--out", required=True)
    p.add_argument("--components", help="comma-separated subset (default: all)")
    p.add_argument("--seed", type=int, default=0, help="stand-in weights' seed (with --preset)")
    p.add_argument("--no-parity", action="store_true", help="skip measuring parity into the manifest")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("parity", help="check artifacts against the reference, per component and end to end")
    p.add_argument("--artifacts", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--json", metavar="REPORT", help="write the full report as JSON to this file ('-': stdout)")
    p.add_argument("--no-end-to-end", action="store_true")
    p.set_defaults(func=cmd_parity)

    p = sub.add_parser("eval", help="prompt adherence of the demo model (and PSNR/SSIM against another source)")
    p.add_argument("--model")
    p.add_argument("--artifacts")
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--prompts", default="held-out", help="held-out, train, or a file with one prompt per line")
    p.add_argument("--count", type=int, default=40)
    p.add_argument(
        "--size", type=int, default=256, help="the demo model is judged at 256 px (its VAE blurs 128 px scenes)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--against-model")
    p.add_argument("--against-artifacts")
    p.add_argument("--against-backend", choices=BACKENDS, default="auto")
    p.add_argument("--threads", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "quantize", help="INT8 / FP8 (or weight-only INT4) transformer: calibrate, measure, export Q/DQ ONNX"
    )
    p.add_argument("--model", help="model directory (default: the built-in demo model)")
    p.add_argument("--format", choices=("int8", "fp8", "int4"), required=True, help="int4 is weight-only, per group")
    p.add_argument("--recipe", help="recipe JSON (default: the shipped one for --format)")
    p.add_argument("--calib-prompts", help="file of calibration prompts, one per line")
    p.add_argument("--out", required=True)
    p.add_argument("--report", help="write report.json and report.html here")
    p.add_argument("--target-psnr", type=float, help="keep the most sensitive layers in high precision until reached")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("inspect", help="components, parameters, memory per precision, token counts")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--preset", default="tiny")
    source.add_argument("--model")
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--height", type=int, default=1024)
    p.add_argument(
        "--hardware",
        action="store_true",
        help="the CPU, what torch and onnxruntime make of it, and the path --backend auto picks here",
    )
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
