"""qiedge's cuda backend on one NVIDIA GPU: the 7B transformer's step per precision (against
diffusers' one-shot forward when diffusers is installed), whole 4-step images, the VAE decoder
whole and in tiles, and the demo checkpoint's accuracy per precision against fp32 on the CPU.
Sized to finish in about 5 minutes on an H100 or H200; writes its tables to
bench/results/gpu-<card>.md.

    python bench/gpu.py [--preset qwen-image-2-7b] [--sizes 1024,2048] [--text 1000] [--runs 5]

The 7B (transformer, VAE and Qwen3-VL text model) has random weights; FP8 and INT8 take their
activation scales from one recorded step at the first size. `--device cpu --preset small
--sizes 256 --text 32 --runs 1 --prompts 2` runs the same code on a CPU, which is how a change
to it is checked before a GPU is lent.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from common import table

RESULTS = Path(__file__).resolve().parent / "results"
PRECISIONS = ("bf16", "fp8", "int8")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_ms(fn, device: torch.device, runs: int) -> float:
    fn()  # warm-up: compiles
    times = []
    for _ in range(runs):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights of unit-variance outputs (std 1/sqrt(fan-in)); norm gains near 1."""
    generator = torch.Generator(next(module.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim > 1:
                p.normal_(0, p[0].numel() ** -0.5, generator=generator)
            else:
                p.normal_(1.0 if "norm" in name and "text_norm" not in name else 0.0, 0.1, generator=generator)
    return module


class RandomModel:
    """The preset at its real size with random weights, built on the device: what the cuda backend
    loads from a model directory (`load_transformer`, `load_vae`)."""

    def __init__(self, preset):
        self.preset = preset

    def _build(self, cls, config, dtype, device, seed):
        with torch.device("meta"):
            module = cls(config)
        module = module.to_empty(device=device)
        # Buffers computed from the config held nothing on meta: rebuild them on the device.
        with torch.device(device):
            fresh = cls(config) if sum(b.numel() for b in module.buffers()) else None
        for name, buffer in fresh.named_buffers() if fresh is not None else ():
            module.get_buffer(name).copy_(buffer)
        return randomize(module, seed).to(dtype or torch.float32).eval()

    def load_transformer(self, dtype=None, device="cpu"):
        from qiedge.reference_model.transformer import QwenImage2Transformer

        return self._build(QwenImage2Transformer, self.preset.transformer, dtype, device, seed=0)

    def load_vae(self, dtype=None, device="cpu"):
        from qiedge.reference_model.vae import QwenImage2VAE

        return self._build(QwenImage2VAE, self.preset.vae, dtype, device, seed=1)


def text_encoder(preset, device, dtype):
    """Qwen3-VL's text path (the condition encoder graph) at the preset's size, random weights."""
    from qiedge.export.specs import SPECS, ModelConfigs
    from qiedge.reference_model.presets import config_dict

    configs = ModelConfigs(preset.transformer, preset.vae, config_dict(preset.encoder))
    with torch.device("meta"):
        graph = SPECS["condition_encoder"].build(configs)
    graph = graph.to_empty(device=device)
    rotary = graph.model.language_model.rotary_emb
    with torch.device(device):
        rotary.inv_freq = type(rotary)(rotary.config).inv_freq
    return randomize(graph, seed=2).to(dtype).eval()


def step_feeds(preset, size: int, text: int, device):
    """The prefix's and the step's feeds for one prompt of `text` tokens at size x size."""
    from qiedge.core.layout import build_layout, transformer_feeds
    from qiedge.core.units import PIXELS_PER_TOKEN

    h = w = size // PIXELS_PER_TOKEN
    layout = build_layout(np.zeros(text, bool), np.ones((1, text), bool), [(1, h, w)])
    embeds = np.random.default_rng(0).standard_normal((1, text, preset.transformer.context_in_dim), np.float32)
    cond = np.zeros((1, 0, preset.transformer.in_channels), np.float32)
    feeds = transformer_feeds(layout, preset.transformer.axes_dims_rope, embeds, cond)
    latents = np.random.default_rng(1).standard_normal((1, h * w, preset.transformer.in_channels), np.float32)
    step = {"latents": latents, "timestep": np.full(1, 0.7, np.float32), **feeds.step}
    return feeds.prefix, step


def calibrated(preset, fmt: str, size: int, text: int, device):
    """A quantize function for the cuda backend: the recipe's layers and scales, the activation
    scales recorded over one prefix and one step of the fp32 model at this size."""
    from qiedge.export.specs import SPECS
    from qiedge.quantization.calibrate import Calibration, linear_layers, recording
    from qiedge.quantization.fake_quant import layer_quants
    from qiedge.quantization.real_quant import real_quantized
    from qiedge.quantization.recipe import Recipe
    from qiedge.runtime.backends.cuda import DeviceSession

    recipe = Recipe.load(fmt)

    def quantize(load):
        transformer = load()
        prefix_feeds, feeds = step_feeds(preset, size, text, device)
        sessions = [
            DeviceSession(SPECS[c].wrapper(transformer), SPECS[c], torch.float32, device, True)
            for c in ("transformer_prefix", "transformer_step")
        ]
        with recording(transformer, seed=0) as stats:
            cache = sessions[0].run(prefix_feeds)
            sessions[1].run({**feeds, **cache})
        layers = recipe.quantized_layers(list(linear_layers(transformer)), len(transformer.transformer_blocks))
        quants = layer_quants(transformer, recipe, Calibration(stats, {"steps": 1, "size": size}), layers)
        return real_quantized(transformer, quants, fmt)[0]

    return quantize


def diffusers_step_ms(backend, preset, size, text, runs) -> float | None:
    """diffusers' one-shot forward (every step reruns the prompt) on the same bf16 weights."""
    try:
        from diffusers import QwenImage21Transformer2DModel
    except ImportError:
        return None
    from qiedge.core.units import PIXELS_PER_TOKEN
    from qiedge.reference_model.presets import config_dict

    device, dtype = backend.device, backend.dtype
    with torch.device("meta"):
        theirs = QwenImage21Transformer2DModel(**config_dict(preset.transformer))
    theirs.load_state_dict(backend.reference("transformer").state_dict(), strict=True, assign=True)
    # Its RoPE tables and timestep frequencies are not weights: built for real, off the meta device.
    embed = theirs.time_text_embed
    embed.time_proj = type(embed.time_proj)(timestep_dim=256).to(device)
    theirs.pos_embed = type(theirs.pos_embed)(theta=10000, axes_dim=list(preset.transformer.axes_dims_rope))
    theirs.eval()
    h = w = size // PIXELS_PER_TOKEN
    hidden = torch.randn(1, h * w, preset.transformer.in_channels, device=device, dtype=dtype)
    context = torch.randn(1, text, preset.transformer.context_in_dim, device=device, dtype=dtype)
    t = torch.tensor([0.7], device=device, dtype=dtype)
    img_mask = torch.ones(1, text + h * w // 4, dtype=torch.bool, device=device)
    img_mask[:, :text] = False  # as bench/gpu_7b_parity.py feeds it
    inputs = {"encoder_hidden_states": context, "timestep": t, "img_shapes": [[(1, h, w)]], "img_mask": img_mask}
    with torch.no_grad():
        return median_ms(lambda: theirs(hidden_states=hidden, **inputs), device, runs)


def seven_b(args, device) -> tuple[list[list], list[list]]:
    """(step rows, whole-image rows) for the preset at its real size."""
    from qiedge.core.prompt import EncodedPrompt
    from qiedge.core.scheduler import SchedulerConfig
    from qiedge.reference_model.presets import get_preset
    from qiedge.runtime.backends.cuda import CudaBackend
    from qiedge.runtime.sampler import Sessions

    preset = get_preset(args.preset)
    model = RandomModel(preset)
    sizes = [int(s) for s in args.sizes.split(",")]
    step_rows, image_rows = [], []
    encoder = text_encoder(preset, device, torch.bfloat16)
    vocab, width = preset.encoder.text_config["vocab_size"], preset.encoder.text_config["hidden_size"]
    deepstack = len(preset.encoder.vision_config["deepstack_visual_indexes"])

    def encode(prompts, images):
        ids = torch.randint(vocab, (1, args.text), device=device)
        mask = torch.ones_like(ids)
        positions = torch.arange(args.text, device=device).expand(3, 1, -1)
        no_images = torch.zeros(deepstack + 1, 1, width, dtype=torch.bfloat16, device=device)  # the zero rows
        with torch.no_grad():
            hidden = encoder(ids, mask, positions, no_images[0], no_images[1:], torch.zeros_like(ids))
        embeds = hidden.float().cpu().numpy()
        return EncodedPrompt(embeds, np.ones(embeds.shape[:2], bool), np.zeros(args.text, bool))

    facts = _facts(preset, SchedulerConfig())
    for precision in PRECISIONS:
        quantize = None if precision == "bf16" else calibrated(preset, precision, sizes[0], args.text, device)
        backend = CudaBackend(model, precision, quantize, str(device))
        if precision == "bf16":
            diffusers = [diffusers_step_ms(backend, preset, s, args.text, args.runs) for s in sizes]
            if None not in diffusers:
                step_rows.append(["diffusers one-shot forward, bf16 eager", *diffusers])
        matmuls = ", real fp8/int8 matmuls" if quantize else ""
        step_rows.append(
            [f"qiedge step, {precision}, compiled blocks{matmuls}", *step_ms(backend, preset, sizes, args)]
        )
        sessions = Sessions(encode, backend.load, arrays=backend.arrays)
        image_rows.append([precision, *image_seconds(sessions, facts, sizes, device, args.runs)])
        del backend, sessions
        torch._dynamo.reset()  # each precision's graphs compiled afresh, none evicting another's
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return step_rows, image_rows


def step_ms(backend, preset, sizes: list[int], args) -> list[float]:
    """The step's latency at each size, against a prefix computed once."""
    prefix, step = backend.load("transformer_prefix"), backend.load("transformer_step")
    put = backend.arrays.put
    times = []
    for size in sizes:
        prefix_feeds, feeds = step_feeds(preset, size, args.text, backend.device)
        cache = prefix.run({n: put(v) for n, v in prefix_feeds.items()})
        fed = {**{n: put(v) for n, v in feeds.items()}, **cache}
        times.append(median_ms(lambda fed=fed: step.run(fed), backend.device, args.runs))
    return times


def image_seconds(sessions, facts, sizes: list[int], device, runs: int) -> list[float]:
    from qiedge.runtime.sampler import Request, generate

    requests = [Request(["a prompt"], width=s, height=s, steps=4) for s in sizes]
    return [median_ms(lambda r=r: generate(r, facts, sessions), device, max(1, runs // 2)) / 1e3 for r in requests]


def vae_rows(args, device) -> list[list]:
    """The bf16 VAE decoder of the preset at each size, whole and in 512 px tiles (a quarter
    overlapping, runtime/tiled_vae.py, on the device's tensors): ms, and the peak of GPU memory
    above what the weights and latents hold."""
    from qiedge.core.tiles import tiling_for
    from qiedge.core.units import PIXELS_PER_TOKEN
    from qiedge.reference_model.presets import get_preset
    from qiedge.runtime.backends.cuda import CudaBackend
    from qiedge.runtime.tiled_vae import TiledDecoder

    preset = get_preset(args.preset)
    backend = CudaBackend(RandomModel(preset), "bf16", device=str(device))
    whole = backend.load("vae_decoder")
    tiled = TiledDecoder(whole, tiling_for(512), backend.arrays)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        side = size // PIXELS_PER_TOKEN
        latents = torch.randn(1, preset.vae.z_dim, side, side, device=device)
        for name, session in (("whole", whole), ("512 px tiles", tiled)):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                held = torch.cuda.memory_allocated(device)  # the weights and the latents
            feeds = {"latents": latents}
            ms = median_ms(lambda s=session, f=feeds: s.run(f), device, max(1, args.runs // 2))
            peak = f"{(torch.cuda.max_memory_allocated(device) - held) / 2**30:.1f}" if device.type == "cuda" else "-"
            rows.append([f"{size}x{size}", name, ms, peak])
    del backend, whole, tiled
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def _facts(preset, scheduler):
    from qiedge.core.artifacts import ModelFacts
    from qiedge.core.vision import VisionFacts
    from qiedge.reference_model.model_dir import image_processor_config
    from qiedge.reference_model.presets import config_dict

    vision = VisionFacts.from_configs(image_processor_config(), config_dict(preset.encoder))
    return ModelFacts(
        preset.transformer.axes_dims_rope,
        preset.transformer.in_channels,
        scheduler,
        preset.sample_sigmas,
        Path(),
        vision,
    )


def demo_accuracy(args, device) -> list[list]:
    """Per precision on the demo checkpoint: lowest per-step velocity cosine along the fp32
    trajectory, PSNR against fp32 on the CPU, and prompt adherence."""
    from qiedge.quantization.accuracy import Evaluation, Judge
    from qiedge.quantization.real_quant import OnHost, quantizer
    from qiedge.quantization.recipe import Recipe
    from qiedge.quantization.report import lowest_cosine
    from qiedge.reference_model.model_dir import ModelDir, demo_model_dir
    from qiedge.runtime.backends.cuda import CudaBackend
    from qiedge.runtime.evaluate import prompt_set

    demo = demo_model_dir()
    judge = Judge(demo, Evaluation.on(prompt_set("held-out", args.prompts), 256))
    rows = [["fp32 (CPU, the reference)", 1.0, float("inf"), judge.fp32_adherence]]
    for precision in PRECISIONS:
        quantize = None if precision == "bf16" else quantizer(demo, Recipe.load(precision), lambda m: None, str(device))
        backend = CudaBackend(ModelDir.open(demo), precision, quantize, str(device))
        prefix, step = (OnHost(backend.load(c), backend.arrays) for c in ("transformer_prefix", "transformer_step"))
        per_step = judge.per_step_of(prefix, step)
        figures = judge.image_figures(judge.images_of(prefix, step))
        rows.append([precision, lowest_cosine(per_step), figures["psnr_db"], figures["adherence"]])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="qwen-image-2-7b")
    parser.add_argument("--sizes", default="1024,2048")
    parser.add_argument("--text", type=int, default=1000, help="prompt tokens")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=8, help="demo prompts for the accuracy table")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    # A timing that fell back to eager would be reported as compiled: fail instead.
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    card = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"gpu-{re.sub(r'[^A-Za-z0-9]+', '-', card).strip('-').lower()}.md"
    start = time.perf_counter()
    sections = [f"# {card}: torch {torch.__version__}, {args.preset} with random weights, {args.text}-token prompt"]

    def publish(section: str) -> None:
        """Each table written as soon as it is measured, so a run cut short keeps what it has."""
        sections.append(section)
        print(section + "\n", flush=True)
        out.write_text("\n\n".join(sections) + "\n")

    step_rows, image_rows = seven_b(args, device)
    sizes = [f"{s}x{s}" for s in args.sizes.split(",")]
    publish(f"Step against the cached prefix, ms (median of {args.runs}):\n\n" + table(["path", *sizes], step_rows))
    publish(
        "Whole 4-step image (encode, prefix, 4 steps, VAE decode), s:\n\n" + table(["precision", *sizes], image_rows)
    )
    publish("VAE decoder, bf16:\n\n" + table(["size", "decode", "ms", "activations' peak GiB"], vae_rows(args, device)))
    torch._dynamo.reset()
    accuracy = demo_accuracy(args, device)
    publish(
        f"Demo checkpoint, {args.prompts} held-out prompts at 256 px, against fp32 on the CPU:\n\n"
        + table(["precision", "per-step cosine (min)", "PSNR dB", "adherence"], accuracy)
    )
    publish(f"Wall time of this script: {time.perf_counter() - start:.0f} s")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
