"""Train the demo checkpoint: a demo-sized Qwen-Image-2 that draws the scenes of
`core/scenes.py` from their prompts in 4 steps.

    python training/train_demo.py --out reference_model/checkpoints/demo [--work training/.work]

Stages, each resumable from its last checkpoint in --work (rerun the same command):
1. `init`: a demo-preset model directory; its tiny Qwen3-VL stays frozen as the condition encoder.
2. `vae`: the 16x / 64-channel RGBA autoencoder on rendered scenes at 128 px; then the
   per-channel latent mean/std, written into the VAE config as the released model has them.
3. `transformer`: flow matching (x_sigma = sigma*noise + (1-sigma)*x0, target noise - x0) against
   the frozen encoder, on the 4-step sampling grid itself (after the scheduler's shift at that
   resolution), which is how the grid is fitted. The first `--text-steps` train at sigma = 1 only:
   there the image says nothing, so the text is all the model has, and it learns to read it far
   faster than when lower sigmas (where the noisy image already shows the layout) share the
   batches. The rest draw half their sigmas at 1 and half at the other grid points.
Everything is seeded from (seed, stage, step), so a resumed run draws the same batches. The
finished directory stores its weights in fp16 (13 MB).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from qiedge.core.files import staged_directory
from qiedge.core.layout import build_layout, rope_tables
from qiedge.core.scenes import render, sample_scene
from qiedge.core.scheduler import sigma_schedule
from qiedge.core.units import PIXELS_PER_TOKEN
from qiedge.reference_model import presets
from qiedge.reference_model.model_dir import ModelDir, init_model_dir
from qiedge.reference_model.weights import save
from qiedge.runtime.sampler import image_to_array, pack

SIZES = (128, 128, 128, 256)  # transformer training resolutions, drawn uniformly
VAE_SIZE = 128  # the VAE is fully convolutional: trained at 128 px, it decodes 256 px scenes as well
CHECKPOINT_EVERY = 200


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def batch_images(rng: np.random.Generator, size: int, count: int):
    scenes = [sample_scene(rng) for _ in range(count)]
    images = np.concatenate([image_to_array(render(s, size)) for s in scenes])
    return [s.prompt() for s in scenes], torch.from_numpy(images)


class Stage:
    """A resumable training loop: model + AdamW + step, checkpointed to work/<name>.pt."""

    def __init__(self, name: str, module: torch.nn.Module, work: Path, lr: float, steps: int, seed: int):
        self.name, self.module, self.steps, self.seed = name, module, steps, seed
        self.path = work / f"{name}.pt"
        self.optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=0.0)
        self.step = 0
        if self.path.exists():
            state = torch.load(self.path, weights_only=True)
            module.load_state_dict(state["module"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.step = state["step"]
            log(f"{name}: resumed at step {self.step}")

    def rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(self.name.encode()), self.step])

    def lr_scale(self) -> float:
        warmup = 100
        if self.step < warmup:
            return (self.step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (self.step - warmup) / max(1, self.steps - warmup)))

    def update(self, loss: torch.Tensor, base_lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = base_lr * self.lr_scale()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), 1.0)
        self.optimizer.step()
        self.step += 1
        if self.step % CHECKPOINT_EVERY == 0 or self.step == self.steps:
            self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        torch.save(
            {"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self.step}, tmp
        )
        tmp.replace(self.path)


def train_vae(model: ModelDir, work: Path, steps: int, seed: int):
    vae = model.load_vae().train()
    for p in vae.parameters():
        p.requires_grad_(True)
    lr = 2e-3
    stage = Stage("vae", vae, work, lr, steps, seed)
    start, losses = time.time(), []
    while stage.step < steps:
        rng = stage.rng()
        _, images = batch_images(rng, VAE_SIZE, 8)
        z = vae.quant_conv(vae.encoder(images))[:, : vae.config.z_dim]
        recon = vae.decoder(vae.post_quant_conv(z))
        loss = F.mse_loss(recon, images) + 1e-4 * z.pow(2).mean()
        stage.update(loss, lr)
        losses.append(loss.item())
        if stage.step % 100 == 0:
            log(f"vae step {stage.step}/{steps} loss {np.mean(losses[-100:]):.5f} ({time.time() - start:.0f} s)")
    return vae.eval()


@torch.no_grad()
def latent_stats(vae, seed: int) -> tuple[list[float], list[float]]:
    rng = np.random.default_rng([seed, 1])
    z = torch.cat([vae.quant_conv(vae.encoder(batch_images(rng, 128, 16)[1]))[:, : vae.config.z_dim] for _ in range(8)])
    mean = z.mean(dim=(0, 2, 3))
    std = z.std(dim=(0, 2, 3)).clamp(min=1e-3)
    return [round(v, 5) for v in mean.tolist()], [round(v, 5) for v in std.tolist()]


def write_vae(model: ModelDir, vae, mean, std) -> None:
    folder = model.path / "vae"
    config = json.loads((folder / "config.json").read_text())
    config.update(latents_mean=mean, latents_std=std)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save(vae, folder / "diffusion_pytorch_model.safetensors")


class Conditioning:
    """Frozen encoder outputs and clean latents, cached per prompt (scenes are deterministic)."""

    def __init__(self, model: ModelDir, vae):
        self.encoder, self.vae = model.load_condition_encoder(), vae
        self.text, self.latents = {}, {}

    @torch.no_grad()
    def __call__(self, prompts: list[str], images: torch.Tensor, size: int):
        missing = [i for i, p in enumerate(prompts) if (p, size) not in self.latents]
        if missing:
            z = self.vae.encode(images[missing])
            for i, latent in zip(missing, z):
                self.latents[(prompts[i], size)] = latent
        new = sorted({p for p in prompts if p not in self.text})
        if new:
            encoded = self.encoder(new)
            for p, row, mask in zip(new, encoded.embeds, encoded.mask):
                self.text[p] = torch.from_numpy(row[mask])
        return [self.text[p] for p in prompts], torch.stack([self.latents[(p, size)] for p in prompts])


def pad_text(rows: list[torch.Tensor]):
    length = max(len(r) for r in rows)
    text = torch.zeros(len(rows), length, rows[0].shape[-1])
    mask = np.zeros((len(rows), length), dtype=bool)
    for b, r in enumerate(rows):
        text[b, : len(r)] = r
        mask[b, : len(r)] = True
    return text, mask


def train_transformer(model: ModelDir, vae, work: Path, text_steps: int, steps: int, seed: int):
    transformer = model.load_transformer().train()
    for p in transformer.parameters():
        p.requires_grad_(True)
    lr = 1e-3
    stage = Stage("transformer", transformer, work, lr, steps, seed)
    condition = Conditioning(model, vae)
    axes = model.transformer.axes_dims_rope
    start, losses = time.time(), []
    while stage.step < steps:
        rng = stage.rng()
        size = SIZES[rng.integers(len(SIZES))]
        prompts, images = batch_images(rng, size, 16 if size == 128 else 4)
        rows, x0 = condition(prompts, images, size)
        text, mask = pad_text(rows)
        h = w = size // PIXELS_PER_TOKEN
        layout = build_layout(np.zeros(text.shape[1], dtype=bool), mask, [(1, h, w)])
        cos, sin = (torch.from_numpy(t) for t in rope_tables(layout.positions, axes))
        x0 = pack(x0.numpy())
        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
        noise = torch.randn(x0.shape, generator=generator)
        sigma, step_weight = sample_sigmas(model, h * w, len(prompts), rng, text_only=stage.step < text_steps)
        xt = sigma[:, None, None] * noise + (1 - sigma[:, None, None]) * torch.from_numpy(x0)
        v = transformer(
            xt,
            sigma,
            text,
            None,
            torch.from_numpy(layout.prefix_gather),
            torch.from_numpy(layout.segment_ids),
            torch.from_numpy(layout.prefix_key_valid),
            cos,
            sin,
        )
        loss = weighted_mse(v, noise - torch.from_numpy(x0), torch.from_numpy(x0), step_weight)
        stage.update(loss, lr)
        losses.append(loss.item())
        if stage.step % 100 == 0:
            log(
                f"transformer step {stage.step}/{steps} loss {np.mean(losses[-100:]):.4f} ({time.time() - start:.0f} s)"
            )
    return transformer.eval()


def weighted_mse(
    prediction: torch.Tensor, target: torch.Tensor, x0: torch.Tensor, step_weight: torch.Tensor
) -> torch.Tensor:
    """MSE weighted per sample by `step_weight` and per token by up to 5x on tokens unlike the
    image's typical (background) token: shapes cover a tenth of the latent grid, and a plain mean
    lets the background drown them out."""
    distance = (x0 - x0.median(dim=1, keepdim=True).values).norm(dim=-1)  # [B, T]
    weight = (1 + 4 * distance / distance.amax(dim=1, keepdim=True).clamp(min=1e-6)) * step_weight[:, None]
    return ((prediction - target).pow(2).mean(-1) * weight).sum() / weight.sum()


def sample_sigmas(model: ModelDir, tokens: int, count: int, rng: np.random.Generator, text_only: bool):
    """(sigmas, weights) [count]: points of the 4-step grid as the sampler visits it.

    A grid point's weight is (sigma_i - sigma_i+1)^2, the share its velocity error has in the final
    latent's: without it, sigma ~ 0.02 (whose target is mostly unpredictable noise) swamps the loss.
    """
    grid = sigma_schedule(model.scheduler, tokens, sample_sigmas=model.sample_sigmas)
    index = np.zeros(count, dtype=int)
    if not text_only:
        index = np.where(rng.random(count) < 0.5, 0, rng.integers(1, len(grid) - 1, size=count))
    weight = np.ones(count) if text_only else (grid[index] - grid[index + 1]) ** 2
    return torch.from_numpy(grid[index].astype(np.float32)), torch.from_numpy(weight.astype(np.float32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="where the finished model directory goes")
    parser.add_argument("--work", default=str(Path(__file__).parent / ".work"))
    parser.add_argument("--vae-steps", type=int, default=800)
    parser.add_argument("--text-steps", type=int, default=3000, help="transformer steps at sigma = 1 only")
    parser.add_argument("--transformer-steps", type=int, default=9000, help="all transformer steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    begin = time.time()

    init = work / "model"
    if not (init / "model_index.json").exists():
        init_model_dir(presets.DEMO, init, seed=args.seed)
    model = ModelDir.open(init)
    if not (work / "vae.done").exists():
        vae = train_vae(model, work, args.vae_steps, args.seed)
        write_vae(model, vae, *latent_stats(vae, args.seed))
        (work / "vae.done").touch()
        model = ModelDir.open(init)
    log(f"vae ready ({time.time() - begin:.0f} s)")
    transformer = train_transformer(model, model.load_vae(), work, args.text_steps, args.transformer_steps, args.seed)
    save(transformer, init / "transformer" / "diffusion_pytorch_model.safetensors")
    with staged_directory(Path(args.out)) as tmp:
        shutil.copytree(init, tmp, dirs_exist_ok=True)
        for path in tmp.rglob("*.safetensors"):
            to_fp16(path)
    log(f"wrote {args.out} in {time.time() - begin:.0f} s of this run")


def to_fp16(path: Path) -> None:
    """Ship the checkpoint in fp16 (half the bytes; loaders cast back to their dtype)."""
    from safetensors.torch import load_file, save_file

    tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_file(path).items()}
    save_file(tensors, str(path), metadata={"format": "pt"})


if __name__ == "__main__":
    main()
