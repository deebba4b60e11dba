"""The reference transformer and VAE at the released 7B dimensions against diffusers, on a GPU.

Both transformers share one set of random weights (assigned, not copied), so the comparison
needs one copy of the 7B model in GPU memory. Prints a table: relative L2 of qiedge's one-shot
and prefix+step velocity against diffusers, and each one's step latency.

    python bench/gpu_7b_parity.py [--dtype bf16|fp32] [--text 1000] [--size 1024]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import table


def timed(fn, runs=3):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), out


def rel(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@torch.no_grad()
def main() -> None:
    from diffusers import AutoencoderKLQwenImage21, QwenImage21Transformer2DModel
    from qiedge.core.layout import build_layout, rope_tables
    from qiedge.core.units import PIXELS_PER_TOKEN
    from qiedge.reference_model import presets
    from qiedge.reference_model.transformer import QwenImage2Transformer
    from qiedge.reference_model.vae import QwenImage2VAE

    parser = argparse.ArgumentParser()
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--text", type=int, default=1000)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    device = "cuda"
    preset = presets.get_preset("qwen-image-2-7b")
    torch.manual_seed(0)
    with torch.device("meta"):
        theirs = QwenImage21Transformer2DModel(**presets.config_dict(preset.transformer))
        ours = QwenImage2Transformer(preset.transformer)
    theirs = theirs.to_empty(device=device).to(dtype)
    for name, p in theirs.named_parameters():
        p.normal_(0, 1 / p.shape[-1] ** 0.5) if p.ndim > 1 else p.normal_(
            1.0 if "norm" in name and "text_norm" not in name else 0.0, 0.1
        )
    # Its RoPE tables (plain attributes) and timestep frequencies (a non-persistent buffer) were
    # built on meta with the rest and hold no values after to_empty: build them for real.
    theirs.pos_embed = type(theirs.pos_embed)(theta=10000, axes_dim=list(preset.transformer.axes_dims_rope))
    embed = theirs.time_text_embed
    embed.time_proj = type(embed.time_proj)(timestep_dim=256).to(device)
    ours.load_state_dict(theirs.state_dict(), strict=True, assign=True)
    ours.eval()

    h = w = args.size // PIXELS_PER_TOKEN
    text = torch.randn(1, args.text, 4096, device=device, dtype=dtype)
    latents = torch.randn(1, h * w, 64, device=device, dtype=dtype)
    t = torch.tensor([0.7], device=device, dtype=dtype)
    img_mask = torch.cat(
        [torch.zeros(1, args.text, dtype=torch.bool), torch.ones(1, h * w // 4, dtype=torch.bool)], 1
    ).to(device)
    ref_s, ref = timed(
        lambda: theirs(
            hidden_states=latents,
            encoder_hidden_states=text,
            timestep=t,
            img_shapes=[[(1, h, w)]],
            img_mask=img_mask,
            return_dict=False,
        )[0][:, -h * w :]
    )
    layout = build_layout(np.zeros(args.text, bool), None, [(1, h, w)])
    cos, sin = (
        torch.from_numpy(x).to(device) for x in rope_tables(layout.positions, preset.transformer.axes_dims_rope)
    )
    p = layout.prefix_len
    g, s, kv = (
        torch.from_numpy(x).to(device) for x in (layout.prefix_gather, layout.segment_ids, layout.prefix_key_valid)
    )
    one_s, one = timed(lambda: ours(latents, t, text, None, g, s, kv, cos, sin))
    prefix_s, (keys, values) = timed(lambda: ours.prefix(text, None, g, s, kv, cos[:p], sin[:p]))
    step_s, step = timed(lambda: ours.step(latents, t, keys, values, kv, cos[p:], sin[p:]))
    rows = [
        ["diffusers one-shot", "-", f"{ref_s * 1e3:.0f}"],
        ["qiedge one-shot", f"{rel(one, ref):.2e}", f"{one_s * 1e3:.0f}"],
        ["qiedge prefix (once)", "-", f"{prefix_s * 1e3:.0f}"],
        ["qiedge step (cached K/V)", f"{rel(step, ref):.2e}", f"{step_s * 1e3:.0f}"],
    ]
    del theirs, ours, keys, values
    torch.cuda.empty_cache()

    with torch.device("meta"):
        vae_theirs = AutoencoderKLQwenImage21(**presets.config_dict(preset.vae))
        vae_ours = QwenImage2VAE(preset.vae)
    vae_theirs = vae_theirs.to_empty(device=device)
    for name, p in vae_theirs.named_parameters():
        p.normal_(1.0, 0.1) if name.endswith("gamma") else p.normal_(0, 0.5 / max(1, p[0].numel()) ** 0.5)
    vae_ours.load_state_dict(vae_theirs.state_dict(), strict=True, assign=True)
    vae_ours = vae_ours.to(device).eval()
    z = torch.randn(1, 64, h, w, device=device)
    mean, std = vae_ours.latents_mean, vae_ours.latents_std
    dec_ref_s, dec_ref = timed(lambda: vae_theirs.decode((z * std + mean)[:, :, None]).sample[:, :, 0], runs=1)
    dec_s, dec = timed(lambda: vae_ours.decode(z), runs=1)
    rows += [
        ["diffusers VAE decode (fp32)", "-", f"{dec_ref_s * 1e3:.0f}"],
        ["qiedge VAE decode (fp32)", f"{rel(dec, dec_ref):.2e}", f"{dec_s * 1e3:.0f}"],
    ]
    print(
        f"\n{torch.cuda.get_device_name()}, transformer in {args.dtype}, {args.text} text tokens, "
        f"{args.size}x{args.size} ({h * w} image tokens), random 7B weights\n"
    )
    print(table(["what", "rel L2 vs diffusers", "ms (median)"], rows))


if __name__ == "__main__":
    main()
