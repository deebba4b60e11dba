"""`qiedge`'s arguments. The choices of backends and targets come from their registries, which
load nothing to list them, so `qiedge --help` is instant."""

from __future__ import annotations

import argparse

from . import commands as c


def build_parser() -> argparse.ArgumentParser:
    from qiedge.export.targets import TARGETS  # registries load their modules on use: --help stays instant
    from qiedge.export.tensorrt_devices import DEVICES
    from qiedge.runtime.auto import BACKENDS

    parser = argparse.ArgumentParser(prog="qiedge", description="Qwen-Image-2 for phones, Macs and edge GPUs.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="write a model directory with deterministic random weights")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=c.cmd_init)

    p = sub.add_parser("generate", help="text-to-image, or editing with --image")
    p.add_argument("prompt")
    p.add_argument("--model", help="model directory (default: the built-in demo model, unless --artifacts)")
    p.add_argument("--artifacts", help="exported artifacts directory")
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="auto (default): the artifacts' own backend with --artifacts (onnxruntime, coreml), else cuda where an "
        "NVIDIA GPU is visible, else the fastest torch path for this CPU "
        "(torch-bf16 where bf16 is native, torch-compile where it is emulated, eager torch for small jobs)",
    )
    p.add_argument(
        "--encoder-backend",
        choices=("torch", "onnxruntime", "coreml"),
        help="run the condition encoder (and vision tower) on another backend, e.g. torch to compare",
    )
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads")
    p.add_argument(
        "--vae-tile",
        type=int,
        help="decode in tiles of this many px a side (a multiple of 64), a quarter overlapping and blended as "
        "diffusers' enable_tiling() blends them: bounds the VAE's memory at large sizes (on the coreml and "
        "tensorrt backends, artifacts exported with --vae-tile decode in their tiles, asked or not)",
    )
    p.add_argument(
        "--precision",
        choices=("bf16", "fp8", "int8"),
        help="--backend cuda only: bf16 (default), or the transformer's recipe layers on real FP8 / INT8 matmuls "
        "(the shipped recipe, calibrated on the GPU at the first load, then read from the calibration cache)",
    )
    p.add_argument("--image", action="append", default=[], help="condition image for editing (repeatable)")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--resolution", type=int, default=1024, help="condition images are resized to about this^2 px")
    p.add_argument("--steps", type=int, help="1-1000; default: the model's distilled grid, else 40")
    p.add_argument(
        "--seed", type=int, default=0, help="0 to 2^32-1: the noise of torch's CPU generator, as diffusers draws it"
    )
    p.add_argument("--batch", type=int, default=1, help="images per prompt (at most 64)")
    p.add_argument(
        "--no-check-finite",
        action="store_true",
        help="do not stop when a component outputs NaN or Inf (checked by default, one reduction per output)",
    )
    p.add_argument("--cfg", type=float, default=1.0, help="guidance scale; > 1 needs --negative-prompt")
    p.add_argument("--negative-prompt")
    p.add_argument("--out", default="qiedge.png")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=c.cmd_generate)

    p = sub.add_parser("export", help="export every component to an artifacts directory")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--model", help="model directory (weights streamed from its safetensors)")
    source.add_argument("--preset", help="a preset with deterministic stand-in weights, e.g. qwen-image-2-7b")
    p.add_argument("--target", default="onnx", help=f"one of {', '.join(TARGETS)}")
    p.add_argument(
        "--precision",
        choices=("fp32", "fp16", "bf16", "int8", "fp8", "int4"),
        help="default: fp32 for onnx, fp16 for coreml and tensorrt; bf16 and the quantized ones: tensorrt "
        "(int8 / fp8 / int4 calibrate the shipped recipe on --model)",
    )
    p.add_argument(
        "--optimize",
        choices=("cpu", "gpu", "none"),
        help="--target onnx: rewrite into ONNX Runtime's fused operators for its CPU (the default) or CUDA provider",
    )
    shapes = p.add_argument_group("shapes (--target coreml: one function each; tensorrt: the profile's range)")
    shapes.add_argument("--sizes", help="image sizes WxH[,WxH...] (default 1024x1024)")
    shapes.add_argument("--prompt-lengths", help="prompt lengths in tokens, e.g. 128,512 (the default)")
    shapes.add_argument(
        "--vae-tile",
        type=int,
        help="the VAE decoder for tiles of this many px a side instead of whole images (a multiple of 64; "
        "generate then decodes in them, as its --vae-tile): a phone or an edge GPU holds one tile's activations",
    )
    coreml = p.add_argument_group("Core ML (--target coreml)")
    coreml.add_argument("--deployment-target", choices=("iOS18", "macOS15", "iOS17"))
    coreml.add_argument(
        "--compute-units",
        choices=("all", "cpu_and_gpu", "cpu_and_ne"),
        help="all (default) and cpu_and_ne get the Neural Engine's split-einsum attention, cpu_and_gpu the plain one",
    )
    coreml.add_argument(
        "--compress",
        choices=("int8", "int4", "palettize4", "palettize6", "mixed"),
        help="weight compression; mixed: 4-bit palettes, the INT8 recipe's high-precision layers at 8 bits",
    )
    coreml.add_argument(
        "--sensitivity",
        metavar="REPORT",
        help="with --compress mixed: a `qiedge quantize --report` report.json; the tenth of the layers "
        "it ranks most sensitive also stay at 8 bits",
    )
    coreml.add_argument(
        "--max-chunk-mb",
        type=float,
        help="cut the transformer and the condition encoder into packages of at most this many MB of weights "
        "(default 1024 where the Neural Engine may run it, the limit iOS loads; none for cpu_and_gpu)",
    )
    trt = p.add_argument_group("TensorRT (--target tensorrt)")
    trt.add_argument("--device", choices=DEVICES, help="the GPU the engines are for (default hopper)")
    trt.add_argument("--trt", help="the TensorRT version to check and build for (default: the device's)")
    trt.add_argument(
        "--recipe",
        help="with --precision int8/fp8/int4: a recipe of that format instead of the shipped one "
        "(fp8-attention: FP8 attention in the pattern TensorRT fuses, or a recipe JSON file)",
    )
    trt.add_argument(
        "--encoder-weights",
        choices=("int4",),
        help="with --precision int8/fp8/int4: also the condition encoder's Linear weights in int4, "
        "weight-only (groups of 64; 15.1 -> 4.9 GB at 7B)",
    )
    trt.add_argument("--max-batch", type=int, help="the profiles' largest batch (default 1)")
    trt.add_argument("--static", action="store_true", default=None, help="min = opt = max shapes, for CUDA graphs")
    trt.add_argument("--build", action="store_true", default=None, help="build the engines here (needs tensorrt)")
    trt.add_argument("--opt-level", type=int, help="builder optimization level (default 3)")
    trt.add_argument("--timing-cache", help="a timing cache from an earlier build on this GPU (read and updated)")
    trt.add_argument(
        "--weight-streaming", action="store_true", default=None, help="let the engine stream weights from host memory"
    )
    p.add_argument("--out", required=True)
    p.add_argument("--components", help="comma-separated subset (default: all)")
    p.add_argument("--seed", type=int, default=0, help="stand-in weights' seed (with --preset)")
    p.add_argument("--no-parity", action="store_true", help="skip measuring parity into the manifest")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=c.cmd_export)

    p = sub.add_parser("check", help="check exported graphs statically against a target (TensorRT's ONNX parser)")
    p.add_argument("artifacts")
    p.add_argument("--target", choices=("tensorrt",), default="tensorrt")
    p.add_argument("--trt", help="the TensorRT version (default: the one the artifacts were exported for)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=c.cmd_check)

    p = sub.add_parser("parity", help="check artifacts against the reference, per component and end to end")
    p.add_argument("--artifacts", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--json", metavar="REPORT", help="write the full report as JSON to this file ('-': stdout)")
    p.add_argument("--no-end-to-end", action="store_true")
    p.set_defaults(func=c.cmd_parity)

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
    p.set_defaults(func=c.cmd_eval)

    p = sub.add_parser(
        "quantize",
        help="INT8 / FP8 (or weight-only INT4) transformer, optionally the condition encoder's weights: "
        "calibrate, measure, export Q/DQ ONNX",
    )
    p.add_argument("--model", help="model directory (default: the built-in demo model)")
    p.add_argument("--format", choices=("int8", "fp8", "int4"), required=True, help="int4 is weight-only, per group")
    p.add_argument("--recipe", help="recipe JSON (default: the shipped one for --format)")
    p.add_argument("--calib-prompts", help="file of calibration prompts, one per line")
    p.add_argument(
        "--eval-prompts",
        default="held-out",
        help="what the accuracy is measured on: held-out or train (the demo model's scenes), or a file with "
        "one prompt per line (the first 40)",
    )
    p.add_argument("--out", required=True)
    p.add_argument("--components", help="comma-separated subset to export (default: all)")
    p.add_argument("--report", help="write report.json and report.html here")
    p.add_argument("--target-psnr", type=float, help="keep the most sensitive layers in high precision until reached")
    p.add_argument(
        "--encoder-weights",
        choices=("int8", "int4"),
        help="also the condition encoder's Linear weights, weight-only: int8 per channel, int4 in groups of 64",
    )
    p.add_argument(
        "--optimize", choices=("cpu", "gpu", "none"), default="cpu", help="ONNX Runtime's fused operators (as export)"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=c.cmd_quantize)

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
    memory = p.add_argument_group("TensorRT memory plan (--target tensorrt --artifacts ART)")
    memory.add_argument("--target", choices=("tensorrt",), help="what of ART's engines fit a device's memory")
    memory.add_argument("--artifacts", help="tensorrt artifacts (their weights and profiles are measured)")
    memory.add_argument("--device", choices=DEVICES, default="orin")
    memory.add_argument("--memory", help="the device's memory, e.g. 16GB (default: 16GB, 32GB and 64GB)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=c.cmd_inspect)
    return parser
