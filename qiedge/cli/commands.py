"""The commands behind `qiedge`: each parses nothing, calls the library, and prints its result
(or JSON). Heavy imports stay inside them, so the torch-free commands stay torch-free."""

from __future__ import annotations

import json
import math
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


def _precision_options(args, model) -> dict:
    """--precision for the backends that take it; fp8 / int8 bring the recipe's real-quant rewrite."""
    if args.precision in ("fp8", "int8"):
        from qiedge.quantization.real_quant import quantizer
        from qiedge.quantization.recipe import Recipe

        log = (lambda message: None) if args.json else (lambda message: print(message, file=sys.stderr))
        return {"precision": args.precision, "quantize": quantizer(model, Recipe.load(args.precision), log=log)}
    return {"precision": args.precision}


def cmd_generate(args) -> None:
    import time

    from qiedge.core.tiles import tiling_for
    from qiedge.core.units import PIXELS_PER_TOKEN
    from qiedge.runtime.images import check_output, open_condition, save_png
    from qiedge.runtime.progress import step_progress
    from qiedge.runtime.runner import open_runtime
    from qiedge.runtime.sampler import Request, generate, schedule_for, to_uint8

    request = Request(
        prompts=[args.prompt] * args.batch,
        width=args.width,
        height=args.height,
        steps=args.steps,
        seed=args.seed,
        cfg=args.cfg,
        negative_prompt=args.negative_prompt,
        images=[open_condition(Path(p)) for p in args.image],
        resolution=args.resolution,
    )
    request.validate()
    tiling = tiling_for(args.vae_tile) if args.vae_tile is not None else None
    check_output(Path(args.out), args.batch)
    model = args.model or (None if args.artifacts else default_model_dir())
    start = time.perf_counter()
    runtime = open_runtime(
        model=model,
        artifacts=args.artifacts,
        backend=args.backend,
        encoder_backend=args.encoder_backend,
        threads=args.threads,
        request=request,
        vae_tiling=tiling,
        **_precision_options(args, model),
    )
    _announce(args, runtime)
    with step_progress("denoising", quiet=args.json) as on_step:
        images = to_uint8(
            generate(request, runtime.facts, runtime.sessions, on_step=on_step, check_finite=not args.no_check_finite)
        )
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
    from qiedge.export.targets import get_target
    from qiedge.export.tensorrt_devices import QUANTIZED
    from qiedge.reference_model import presets
    from qiedge.reference_model.model_dir import ModelDir

    options = _target_options(args)
    get_target(args.target, **options)  # an unbuilt target or a bad option is refused before anything loads
    if bool(args.model) == bool(args.preset):
        raise ValueError("export needs exactly one of --model DIR or --preset P")
    quantized = args.precision in QUANTIZED
    if quantized and args.target != "tensorrt":
        raise ValueError(f"--precision {args.precision} exports for tensorrt; for onnx use `qiedge quantize`")
    if quantized and not args.model:
        raise ValueError(f"{args.precision} graphs are calibrated on real weights: pass --model DIR, not --preset")
    if (args.recipe or args.encoder_weights) and not quantized:
        flag = "--recipe" if args.recipe else "--encoder-weights"
        raise ValueError(f"{flag} goes with --precision int8, fp8 or int4")
    model = ModelDir.open(args.model) if args.model else None
    if quantized:
        manifest = _export_quantized(args, model, options)
    else:
        manifest = _export_float(args, model, presets.get_preset(args.preset) if args.preset else None, options)
    # ONNX Runtime's CPU provider has no bf16 MatMul: bf16 graphs are measured only where they run.
    measurable = args.precision != "bf16"
    if model is not None and not args.no_parity and measurable:
        manifest = _record_parity(Path(args.out), model.path)
    failed = [
        n
        for n, c in manifest["components"].items()
        if c["parity"] and c["parity"]["measured"] and not c["parity"]["passed"]
    ]
    unmeasured = [n for n, c in manifest["components"].items() if c["parity"] and not c["parity"]["measured"]]
    note = f"; parity not measured (no case fits the buckets): {', '.join(unmeasured)}" if unmeasured else ""
    if model is not None and not measurable:
        note += "; parity not measured (ONNX Runtime's CPU provider cannot run bf16 graphs)"
    if args.target == "tensorrt":
        note += f"; {manifest['tensorrt']['engines']}"
    _emit(args, manifest, f"wrote {args.out} ({', '.join(manifest['components'])}){note}")
    if failed:
        raise ValueError(f"exported, but parity misses its threshold for: {', '.join(failed)} (see manifest.json)")


def _export_float(args, model, preset, options: dict) -> dict:
    from qiedge.export.run import export_artifacts

    def report(name, seconds):
        return args.json or print(f"exported {name} in {seconds:.1f} s", file=sys.stderr)

    # TensorRT's --precision names the engine's; its graph is fp16 (or bf16) around any Q/DQ.
    precision = args.precision if args.target != "tensorrt" or args.precision == "bf16" else None
    return export_artifacts(
        args.out,
        args.target,
        precision,
        model=model,
        preset=preset,
        seed=args.seed,
        components=_components(args),
        on_component=report,
        target_options=options,
    )


def _components(args) -> list[str] | None:
    """`--components a,b` of export and quantize; None: every component the target exports."""
    return args.components.split(",") if args.components else None


def _export_quantized(args, model, options: dict) -> dict:
    """The shipped recipe calibrated on the model, its Q/DQ in the target's graphs."""
    from qiedge.quantization.recipe import Recipe
    from qiedge.quantization.run import quantize

    log = (lambda message: None) if args.json else (lambda message: print(message, file=sys.stderr))
    components = _components(args)
    recipe = _with_encoder(Recipe.load(args.recipe or args.precision), args.encoder_weights)
    if recipe.format != args.precision:
        raise ValueError(f"recipe {recipe.name} is {recipe.format}, not {args.precision}")
    quantize(
        model.path,
        recipe,
        args.out,
        components=components,
        log=log,
        target=args.target,
        target_options=options,
    )
    from qiedge.core.artifacts import Artifacts

    return Artifacts.open(args.out).manifest


def _with_encoder(recipe, encoder_weights: str | None):
    """The recipe, with `--encoder-weights` where given (over the recipe's own `encoder`)."""
    from dataclasses import replace

    from qiedge.quantization.recipe import EncoderWeights

    return replace(recipe, encoder=EncoderWeights.named(encoder_weights)) if encoder_weights else recipe


def _target_options(args) -> dict:
    """The target's own options, as given; another target's options are refused by the target."""
    from qiedge.core.buckets import parse_lengths, parse_sizes

    parse = {"sizes": parse_sizes, "prompt_lengths": parse_lengths, "max_chunk_mb": float}
    names = (
        *("optimize", "sizes", "prompt_lengths", "vae_tile"),
        *("deployment_target", "compute_units", "compress", "max_chunk_mb"),
        *("device", "trt", "max_batch", "static", "build", "opt_level", "timing_cache", "weight_streaming"),
    )
    options = {n: parse.get(n, lambda v: v)(getattr(args, n)) for n in names if getattr(args, n) is not None}
    if args.target == "tensorrt" and args.precision:
        options["precision"] = args.precision
    if args.sensitivity and args.compress != "mixed":
        raise ValueError("--sensitivity chooses the 8-bit layers of --compress mixed")
    if args.compress == "mixed":
        # The layers the INT8 recipe keeps in high precision, and the report's most sensitive.
        from qiedge.quantization.recipe import Recipe
        from qiedge.quantization.report import most_sensitive

        ranked = most_sensitive(Path(args.sensitivity)) if args.sensitivity else ()
        options["sensitive"] = Recipe.load("int8").keep_high_precision + ranked
    return options


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _record_parity(out: Path, model: Path) -> dict:
    """Measure each component against the reference and write the figures into the manifest."""
    from qiedge.core.artifacts import update_manifest
    from qiedge.parity.checks import run_parity

    report = run_parity(out, model, end_to_end=False)

    def record(manifest):
        for name, result in report["components"].items():
            manifest["components"][name]["parity"] = {
                "reference": "torch fp32",
                "bound": result["bound"],
                # JSON has no NaN or infinity: nothing measured, or an exact match, is null.
                "worst_rel_l2": _finite(result["worst_rel_l2"]),
                "worst_psnr_db": _finite(result["worst_psnr_db"]),
                "cases": len(result["cases"]),
                "not_run": len(result["not_run"]),
                "measured": result["measured"],
                "passed": result["passed"],
            }

    return update_manifest(out, record)


def cmd_check(args) -> None:
    from qiedge.core.artifacts import Artifacts
    from qiedge.export import tensorrt_check

    artifacts = Artifacts.open(args.artifacts)
    version = args.trt or artifacts.manifest.get("tensorrt", {}).get("checked_against")
    version = tensorrt_check.resolve(version or tensorrt_check.versions()[-1])
    problems = {name: tensorrt_check.check_file(artifacts.verify(name), version) for name in artifacts.components}
    lines = [f"{name:<20} {'ok' if not found else f'{len(found)} problem(s)'}" for name, found in problems.items()]
    lines += [f"  {p}" for found in problems.values() for p in found]
    payload = {"tensorrt": version, "components": problems, "passed": not any(problems.values())}
    _emit(args, payload, f"TensorRT {version} ({tensorrt_check.table(version).source})\n" + "\n".join(lines))
    if not payload["passed"]:
        failing = [name for name, found in problems.items() if found]
        raise ValueError(f"not TensorRT {version}-ready: {', '.join(failing)}")


def cmd_parity(args) -> None:
    from qiedge.parity.checks import run_parity

    report = run_parity(args.artifacts, args.model, end_to_end=not args.no_end_to_end)
    if args.json:
        text = json.dumps(report, indent=2)
        print(text) if args.json == "-" else Path(args.json).write_text(text + "\n")
    lines = [f"{'component':<20} {'worst rel L2':>13} {'worst PSNR':>11} {'bound':>14}  result"]
    for name, c in report["components"].items():
        result = "ok" if c["passed"] else "FAIL"
        if c["not_run"]:
            result += f" ({len(c['not_run'])} case(s) outside the exported buckets)"
        bound = c["bound"]
        limit = f"PSNR >= {bound['value']:g} dB" if bound["metric"] == "psnr_db" else f"rel L2 <= {bound['value']:.0e}"
        figures = f"{c['worst_rel_l2']:>13.2e} {c['worst_psnr_db']:>8.1f} dB {limit:>14}"
        lines.append(f"{name:<20} {figures}  {result}")
    for c in report.get("end_to_end", {}).get("cases", []):
        lines.append(f"end to end {c['case']:<24} PSNR {c['psnr_db']:>6.1f} dB  rel L2 {c['rel_l2']:.2e}")
    lines += [f"not run: {n}" for n in report.get("end_to_end", {}).get("not_run", [])]
    if args.json != "-":
        print("\n".join(lines))
    problems = list(report["failures"])
    if report["unmeasured"]:
        problems.append(
            f"not measured for {', '.join(report['unmeasured'])}: no case fits the exported buckets "
            "(the cases run at 32-128 px; export a 64x64 and a 96x64 size too)"
        )
    if problems:
        raise ValueError("parity failed: " + "; ".join(problems))


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

    recipe = _with_encoder(Recipe.load(args.recipe or args.format), args.encoder_weights)
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
        eval_prompts=args.eval_prompts,
        components=_components(args),
        log=log,
        target_options={"optimize": args.optimize},
    )
    a = record["accuracy"]
    adherence = (
        "n/a" if a["adherence"] is None else f"{100 * a['adherence']:.1f}% (fp32 {100 * a['fp32_adherence']:.1f}%)"
    )
    encoder = record.get("encoder")
    encoded = (
        f"; encoder: {len(encoder['layers_quantized'])} layers {encoder['format']} weight-only, "
        f"min hidden-state cosine {encoder['hidden_states']['cosine_min']:.4f}"
        if encoder
        else ""
    )
    _emit(
        args,
        record,
        f"wrote {args.out}: {len(record['layers_quantized'])} layers {record['format']}, "
        f"min step cosine {min(s['cosine_min'] for s in a['per_step']):.4f}, "
        f"PSNR {a['psnr_db']:.1f} dB, adherence {adherence}{encoded}",
    )


def cmd_inspect(args) -> None:
    if args.hardware:
        return _inspect_hardware(args)
    if args.target == "tensorrt":
        return _inspect_memory(args)
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


def _memory_size(text: str) -> int:
    number = text.upper().removesuffix("B").removesuffix("G")
    if not number.replace(".", "", 1).isdigit():
        raise ValueError(f"--memory {text!r}: give gigabytes, e.g. 16GB")
    return int(float(number) * (1 << 30))


def _inspect_memory(args) -> None:
    from qiedge.core.artifacts import Artifacts
    from qiedge.export import tensorrt_memory
    from qiedge.export.tensorrt_devices import DEVICES

    if not args.artifacts:
        raise ValueError("the memory plan measures exported graphs: pass --artifacts ART (from --target tensorrt)")
    artifacts = Artifacts.open(args.artifacts)
    if artifacts.manifest["target"] != "tensorrt":
        raise ValueError(f"{args.artifacts} holds {artifacts.manifest['target']} artifacts, not tensorrt ones")
    memories = [_memory_size(args.memory)] if args.memory else [16 << 30, 32 << 30, 64 << 30]
    needs = tensorrt_memory.needs(artifacts)
    workspace = DEVICES[args.device].workspace_mb << 20
    plans = [tensorrt_memory.plan(needs, memory, workspace) for memory in memories]
    gb = 1 << 30
    precision = artifacts.manifest["precision"]
    lines = [f"{precision} engines of {args.artifacts}, largest profile shapes, on {args.device}:"]
    lines += [
        f"  {phase:<18} weights {n.weights / gb:6.2f} GB  activations <= {n.activations / gb:6.2f} GB"
        + (f" ({n.unresolved} tensors unresolved)" if n.unresolved else "")
        for phase, n in needs.items()
    ]
    lines += [f"{p['memory'] / gb:>4.0f} GB ({p['usable'] / gb:.0f} usable): {p['verdict']}" for p in plans]
    advice = tensorrt_memory.advice(plans, tiled=artifacts.vae_tiling is not None)
    lines += advice
    estimates = _quantized_estimates(artifacts, needs, memories, workspace, args.device)
    for e in estimates:
        encoder = " + --encoder-weights int4" if e["encoder_int4"] else ""
        bits = f"{e['bits']:g} bits per quantized transformer weight"
        bits += f", {e['encoder_bits']:g} per encoder one" if e["encoder_int4"] else ""
        lines.append(f"{e['precision']}{encoder}, estimated from these weights ({bits}):")
        lines += [f"{p['memory'] / gb:>4.0f} GB: {p['verdict']}" for p in e["plans"]]
    payload = {
        "needs": {k: vars(v) for k, v in needs.items()},
        "plans": plans,
        "estimates": estimates,
        "advice": advice,
        "device": args.device,
    }
    _emit(args, payload, "\n".join(lines))


def _quantized_estimates(artifacts, needs, memories: list[int], workspace: int, device: str) -> list[dict]:
    """From fp16 artifacts, each quantized precision the device runs: the transformer's weights
    with the shipped recipe's layers at its width (activations as in fp16); where the condition
    encoder is exported, each also with its Linear weights in int4 (`--encoder-weights int4`)."""
    from qiedge.export import tensorrt_memory
    from qiedge.export.tensorrt_devices import DEVICES, QUANTIZED
    from qiedge.quantization.recipe import ENCODER_LAYERS, EncoderWeights, Recipe

    graphs = [c for c in tensorrt_memory.PHASES["transformer"] if c in artifacts.components]
    if artifacts.manifest["precision"] != "fp16" or not graphs:
        return []
    layers = {n: e for c in graphs for n, e in tensorrt_memory.matrices(artifacts.verify(c)).items()}
    blocks = artifacts.manifest["model"]["transformer"]["num_layers"]
    # Whether the encoder's weights are int4 -> the needs that replace the fp16 artifacts' then.
    variants = {False: {}}
    encoder_bits = EncoderWeights.named("int4").bits
    if "condition_encoder" in needs:
        linear = sum(tensorrt_memory.matrices(artifacts.verify("condition_encoder"), ENCODER_LAYERS).values())
        encoder = tensorrt_memory.requantized(needs["condition_encoder"], linear, encoder_bits)
        variants[True] = {"condition_encoder": encoder}
    estimates = []
    for precision in (p for p in QUANTIZED if p in DEVICES[device].precisions):
        recipe = Recipe.load(precision)
        bits = recipe.bits
        elements = sum(layers[n] for n in recipe.quantized_layers(list(layers), blocks))
        transformer = {"transformer": tensorrt_memory.requantized(needs["transformer"], elements, bits)}
        for encoder_int4, encoder in variants.items():
            need = {**needs, **transformer, **encoder}
            plans = [tensorrt_memory.plan(need, memory, workspace) for memory in memories]
            estimates.append(
                {
                    "precision": precision,
                    "bits": bits,
                    "quantized_weights": elements,
                    "encoder_int4": encoder_int4,
                    "encoder_bits": encoder_bits if encoder_int4 else None,
                    "weights": {phase: n.weights for phase, n in need.items()},
                    "plans": plans,
                }
            )
    return estimates


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
