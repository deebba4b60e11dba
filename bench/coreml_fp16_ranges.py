"""The largest |activation| per op of the transformer and the VAE, which decides the ops a Core ML
fp16 package keeps in fp32 (export/coreml_fp16.py). Writes export/coreml_fp16_ranges.json.

- demo: real sampling trajectories of the trained demo checkpoint (several prompts and sizes);
  every prefix, step and decode call is measured.
- 7B: the released transformer dimensions (first blocks, stand-in weights) at several sizes and
  prompt lengths, prefix and step at several sigmas; the released VAE decoder dimensions.

Attention runs in the Neural Engine layout, so the softmax inputs (the scores) are measured.

    python bench/coreml_fp16_ranges.py [--blocks 2] [--out export/coreml_fp16_ranges.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import torch
from qiedge.export import coreml_attention
from qiedge.export.coreml_fp16 import RANGES, ActivationRanges, risky

DEMO_PROMPTS = ["a red circle on the left on a blue background", "two green squares", "a yellow star, top right"]
DEMO_SIZES = ((256, 256), (384, 256))
BIG_SIZES = ((512, 512), (1024, 1024))
BIG_TEXT = (32, 256)


class Measured:
    """A session whose calls are measured into one ActivationRanges."""

    def __init__(self, session, ranges: ActivationRanges):
        self.session, self.ranges = session, ranges

    def run(self, feeds):
        with self.ranges:
            return self.session.run(feeds)


def demo(log) -> dict[str, dict[str, float]]:
    from qiedge.reference_model.model_dir import demo_model_dir
    from qiedge.runtime.runner import open_runtime
    from qiedge.runtime.sampler import Request, generate

    runtime = open_runtime(model=demo_model_dir(), backend="torch")
    ranges = {"transformer": ActivationRanges(), "vae": ActivationRanges()}
    sessions = runtime.sessions.replacing(
        transformer_prefix=Measured(runtime.sessions["transformer_prefix"], ranges["transformer"]),
        transformer_step=Measured(runtime.sessions["transformer_step"], ranges["transformer"]),
        vae_decoder=Measured(runtime.sessions["vae_decoder"], ranges["vae"]),
    )
    for prompt in DEMO_PROMPTS:
        for width, height in DEMO_SIZES:
            generate(Request([prompt], width=width, height=height, seed=len(prompt)), runtime.facts, sessions)
            log(f"demo: {prompt!r} at {width}x{height}")
    return {f"demo {name}": r.maxima for name, r in ranges.items()}


def big_transformer(blocks: int, log) -> dict[str, float]:
    """The 7B transformer's first blocks with stand-in weights (export/sources.py's RandomSource)."""
    from qiedge.core.layout import build_layout, transformer_feeds
    from qiedge.export.run import _source, model_configs
    from qiedge.export.specs import SPECS
    from qiedge.export.wrappers import TransformerPrefixGraph, TransformerStepGraph
    from qiedge.reference_model.presets import get_preset
    from qiedge.reference_model.transformer import QwenImage2Transformer

    preset = get_preset("qwen-image-2-7b")
    config = dataclasses.replace(preset.transformer, num_layers=blocks)
    configs = dataclasses.replace(model_configs(None, preset), transformer=config)
    source = _source(SPECS["transformer_step"], None, configs, seed=0)
    model = QwenImage2Transformer(config).eval()
    model.load_state_dict({k: torch.from_numpy(source.get(k, torch.float32)) for k in source.shapes})
    ranges, rng = ActivationRanges(), np.random.default_rng(0)
    for width, height in BIG_SIZES:
        for text_len in BIG_TEXT:
            h, w = height // 16, width // 16
            layout = build_layout(np.zeros(text_len, bool), None, [(1, h, w)])
            text = rng.standard_normal((1, text_len, config.context_in_dim), dtype=np.float32)
            feeds = transformer_feeds(
                layout, config.axes_dims_rope, text, np.zeros((1, 0, config.in_channels), np.float32)
            )
            with torch.no_grad(), ranges:
                keys, values = TransformerPrefixGraph(model)(**_tensors(feeds.prefix))
                for sigma in (1.0, 0.5, 0.05):
                    latents = rng.standard_normal((1, h * w, config.in_channels), dtype=np.float32)
                    step = {"latents": latents, "timestep": np.array([sigma], np.float32), **feeds.step}
                    TransformerStepGraph(model)(**_tensors(step), past_keys=keys, past_values=values)
            log(f"7B transformer ({blocks} blocks): {width}x{height}, {text_len} text tokens")
    return ranges.maxima


def _tensors(feeds: dict) -> dict:
    return {k: torch.from_numpy(np.asarray(v)) for k, v in feeds.items()}


def big_vae(log) -> dict[str, float]:
    from qiedge.export.run import _source, model_configs
    from qiedge.export.specs import SPECS
    from qiedge.reference_model.presets import get_preset
    from qiedge.reference_model.vae import QwenImage2VAE

    configs = model_configs(None, get_preset("qwen-image-2-7b"))
    source = _source(SPECS["vae_decoder"], None, configs, seed=0)
    vae = QwenImage2VAE(configs.vae).eval()
    vae.load_state_dict({k: torch.from_numpy(source.get(k, torch.float32)) for k in source.shapes}, strict=False)
    ranges = ActivationRanges()
    for size in (256, 512):
        latents = torch.randn(1, configs.vae.z_dim, size // 16, size // 16, generator=torch.Generator().manual_seed(0))
        with torch.no_grad(), ranges:
            vae.decode(latents)
        log(f"7B VAE decoder: {size}x{size}")
    return ranges.maxima


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=2, help="7B transformer blocks to measure")
    parser.add_argument("--out", default=str(RANGES))
    args = parser.parse_args()
    start = time.perf_counter()

    def log(message):
        print(f"[{time.perf_counter() - start:6.0f} s] {message}", flush=True)

    with coreml_attention.layout(coreml_attention.SPLIT_EINSUM):
        maxima = demo(log)
        maxima["7B transformer"] = big_transformer(args.blocks, log)
        maxima["7B vae"] = big_vae(log)
    data = {
        "sources": [
            f"demo checkpoint: {len(DEMO_PROMPTS)} prompts x {DEMO_SIZES} px, every prefix, step and decode",
            f"qwen-image-2-7b transformer, first {args.blocks} blocks, stand-in weights: {BIG_SIZES} px x "
            f"{BIG_TEXT} text tokens, steps at sigma 1.0 / 0.5 / 0.05",
            "qwen-image-2-7b VAE decoder, stand-in weights: 256 and 512 px",
        ],
        "maxima": {source: dict(sorted(m.items())) for source, m in maxima.items()},
    }
    with open(args.out, "w") as f:
        f.write(json.dumps(data, indent=2) + "\n")
    rows = [(s, op, peak) for s, m in maxima.items() for op, peak in risky(m).items()]
    print("\n".join(f"{s:<16} {op:<12} max |x| {peak:.4g}" for s, op, peak in rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
