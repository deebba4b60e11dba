"""End-to-end text-to-image latency on the CPU: diffusers' QwenImage21Pipeline (eager fp32 and
bf16) against every qiedge path, same weights, same seed, in one run. Prints Markdown tables.

The ONNX Runtime paths: `onnxruntime` the graphs as exported (`--optimize none`), `-opt` with ONNX
Runtime's fused attention (the default export), `-int8` the static Q/DQ recipe (SmoothQuant, as
TensorRT reads it), `-int8-dynamic` int8 weights with activations quantized at run time (fused
DynamicQuantizeMatMul), `-int4` weight-only 4-bit (ONNX Runtime fuses its blocked DQ + MatMul into
MatMulNBits); the quantized ones fused as `-opt`.

    python bench/e2e.py --preset small --size 512 --runs 5

Also reports each path's final-image PSNR against fp32, time per component, and the runtime's
own overhead (time outside the graphs) as a share of the total. Compile time is excluded from
the medians (one warm-up call) and reported on its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time
from collections import defaultdict

import numpy as np
from common import artifacts, machine_header, median_seconds, model_dir, quantized, table
from qiedge.runtime.backends import REGISTRY

PROMPT = "a red circle on the left on a blue background"


class TimedSession:
    """Wraps a session and adds its wall time to a shared per-component counter."""

    def __init__(self, session, name: str, clock: dict):
        self.session, self.name, self.clock = session, name, clock

    def run(self, feeds):
        start = time.perf_counter()
        out = self.session.run(feeds)
        self.clock[self.name] += time.perf_counter() - start
        return out


def qiedge_path(model, backend: str, request, art=None):
    from qiedge.runtime.runner import open_runtime
    from qiedge.runtime.sampler import TEXT_TO_IMAGE, generate

    runtime = open_runtime(
        model=None if backend == "onnxruntime" else model, artifacts=art, backend=backend, request=request
    )
    if backend == "auto":
        print(f"auto: {runtime.choice.backend} ({runtime.choice.reason})", flush=True)
    clock = defaultdict(float)
    timed = {name: TimedSession(runtime.sessions[name], name, clock) for name in TEXT_TO_IMAGE}
    encode = runtime.sessions.encode

    def timed_encode(prompts, images):
        start = time.perf_counter()
        out = encode(prompts, images)
        clock["encoder"] += time.perf_counter() - start
        return out

    sessions = dataclasses.replace(runtime.sessions.replacing(**timed), encode=timed_encode)

    def run(request):
        clock.clear()
        start = time.perf_counter()
        image = generate(request, runtime.facts, sessions)
        clock["total"] = time.perf_counter() - start
        return image, dict(clock)

    return run


def diffusers_path(model, dtype_name: str):
    import torch
    from diffusers import QwenImage21Pipeline

    pipe = QwenImage21Pipeline.from_pretrained(model)
    if dtype_name == "bf16":
        pipe.to(torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)

    def run(request):
        start = time.perf_counter()
        image = pipe(
            request.prompts,
            width=request.width,
            height=request.height,
            output_type="np",
            generator=torch.Generator().manual_seed(request.seed),
        ).images
        return image.astype(np.float32), {"total": time.perf_counter() - start}

    return run


def main() -> None:
    from qiedge.core.metrics import psnr
    from qiedge.runtime.sampler import Request

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--paths",
        default="diffusers-fp32,diffusers-bf16,torch,torch-compile,torch-bf16,onnxruntime,onnxruntime-opt,"
        "onnxruntime-int8,onnxruntime-int8-dynamic,onnxruntime-int4,auto",
    )
    args = parser.parse_args()

    print(machine_header(), flush=True)
    request = Request([PROMPT], width=args.size, height=args.size, seed=0)
    builders = {
        "diffusers-fp32": lambda: diffusers_path(model, "fp32"),
        "diffusers-bf16": lambda: diffusers_path(model, "bf16"),
        **{
            name: (lambda name=name: qiedge_path(model, name, request))
            for name, entry in REGISTRY.items()
            if entry.needs == "model"
        },
        "onnxruntime": lambda: qiedge_path(model, "onnxruntime", request, artifacts(model, "fp32", "none")),
        "onnxruntime-opt": lambda: qiedge_path(model, "onnxruntime", request, artifacts(model, "fp32")),
        **{
            f"onnxruntime-{recipe}": (
                lambda recipe=recipe: qiedge_path(model, "onnxruntime", request, quantized(model, recipe))
            )
            for recipe in ("int8", "int8-dynamic", "int4")
        },
        "auto": lambda: qiedge_path(model, "auto", request),
    }
    paths = args.paths.split(",")
    unknown = [p for p in paths if p not in builders]
    if unknown:
        parser.error(f"unknown path(s) {', '.join(unknown)}; choose from {', '.join(builders)}")
    model = model_dir(args.preset)  # the builders read it when they are called
    results = {}
    for name in paths:
        run = builders[name]()
        start = time.perf_counter()
        run(request)  # warm-up: compilation, allocator, caches
        warmup = time.perf_counter() - start
        seconds, (image, clock) = median_seconds(functools.partial(run, request), args.runs, warmup=0)
        results[name] = (seconds, image, clock, warmup)
        print(f"{name}: {seconds:.3f} s", flush=True)

    # PSNR against qiedge's fp32 (or diffusers', equal to it), where one of them ran.
    reference = next((results[k][1] for k in ("torch", "diffusers-fp32") if k in results), None)
    fp32, bf16 = (results.get(k, (None,))[0] for k in ("diffusers-fp32", "diffusers-bf16"))
    rows = []
    for name, (seconds, image, clock, warmup) in results.items():
        inside = sum(v for k, v in clock.items() if k != "total")
        overhead = f"{100 * (clock['total'] - inside) / clock['total']:.2f}%" if inside else "n/a"
        rows.append(
            [
                name,
                seconds,
                f"{fp32 / seconds:.2f}x" if fp32 else "-",
                f"{bf16 / seconds:.2f}x" if bf16 else "-",
                f"{psnr(image, reference, peak=1.0):.1f}" if reference is not None else "-",
                overhead,
                f"{warmup:.1f}",
            ]
        )
    print(f"\n{args.preset} preset, {args.size}x{args.size}, 4 steps, batch 1, median of {args.runs} runs\n")
    print(
        table(
            [
                "path",
                "median s",
                "vs diffusers fp32",
                "vs diffusers bf16",
                "PSNR vs fp32 dB",
                "runtime overhead",
                "first call s",
            ],
            rows,
        )
    )
    parts = ["encoder", "transformer_prefix", "transformer_step", "vae_decoder"]
    rows = [
        [name] + [clock.get(p, float("nan")) for p in parts]
        for name, (_, _, clock, _) in results.items()
        if "transformer_step" in clock
    ]
    print("\nper component, seconds (last run)\n")
    print(table(["path", *parts], rows))


if __name__ == "__main__":
    main()
