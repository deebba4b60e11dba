"""What quantization costs, measured the way deployers need it: per-step velocity cosine and
relative error along the fp32 trajectory, final-image PSNR/SSIM against fp32, demo-model
adherence, and per-layer sensitivity (one layer quantized at a time)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from qiedge.core.metrics import Comparison, psnr, ssim
from qiedge.export.specs import SPECS
from qiedge.runtime.adherence import adherence
from qiedge.runtime.backends.pytorch import TorchSession
from qiedge.runtime.runner import open_runtime
from qiedge.runtime.sampler import Request, Sessions, generate, to_uint8


def torch_sessions(transformer) -> tuple[TorchSession, TorchSession]:
    """prefix and step sessions over a (possibly fake-quantized) reference transformer."""
    return tuple(
        TorchSession(SPECS[n].wrapper(transformer).eval(), SPECS[n], autocast=False)
        for n in ("transformer_prefix", "transformer_step")
    )


class Recorded:
    """The fp32 step session, keeping every call's velocity in call order: the fp32 trajectory,
    which the quantized model is then measured along without running fp32 again."""

    def __init__(self, step):
        self.step, self.velocities = step, []

    def run(self, feeds):
        velocity = self.step.run(feeds)["velocity"]
        self.velocities.append(velocity)
        return {"velocity": velocity}


class AlongReference:
    """Follows the recorded fp32 trajectory: at every call runs the quantized step (with the
    quantized prefix's K/V) on the latents fp32 saw, records how far its velocity is from fp32's,
    and returns fp32's, so the sampler takes fp32's next step. The same requests give the same
    latents: the sampler is deterministic."""

    def __init__(self, quantized, recorded: list[np.ndarray]):
        self.quantized, self.recorded = quantized, iter(recorded)
        self.steps: list[tuple[float, float, int]] = []

    def run(self, feeds):
        expected = next(self.recorded)
        figures = Comparison.of(self.quantized.run(feeds)["velocity"], expected)
        self.steps.append((figures.cosine, figures.rel_l2, figures.non_finite))
        return {"velocity": expected}


class NoImage:
    """The VAE decoder of a replay, whose figures are its step velocities: no image is looked at,
    and decoding one cost more than the steps (1.6 s a batch of four on the demo model)."""

    def run(self, feeds):
        return {"image": np.zeros((feeds["latents"].shape[0], 4, 1, 1), np.float32)}


@dataclass
class Evaluation:
    requests: list[Request]

    @classmethod
    def on(cls, prompts: list[str], size: int, seed: int = 0, batch: int = 4) -> Evaluation:
        return cls(
            [
                Request(prompts[i : i + batch], width=size, height=size, seed=seed + i)
                for i in range(0, len(prompts), batch)
            ]
        )

    @property
    def prompts(self) -> list[str]:
        return [p for r in self.requests for p in r.prompts]


class Judge:
    """Everything measured against one fp32 reference model."""

    def __init__(self, model_path, evaluation: Evaluation):
        self.runtime = open_runtime(model=model_path, backend="torch")
        self.reference = self.runtime.backend.reference("transformer")
        self.evaluation = evaluation
        prefix, step = torch_sessions(self.reference)
        recorded = Recorded(step)
        self.fp32_images = self.images_of(prefix, recorded)
        self.fp32_steps = (list(evaluation.requests), recorded.velocities)  # the requests, their steps in order
        self.fp32_adherence = _adherence_or_none(self.fp32_images.pixels, evaluation.prompts)

    def _sessions(self, prefix, step, encode=None) -> Sessions:
        """The fp32 sessions with this prefix and step, and this prompt encoder (a quantized
        condition encoder) where one is given."""
        sessions = self.runtime.sessions.replacing(transformer_prefix=prefix, transformer_step=step)
        return sessions if encode is None else replace(sessions, encode=encode)

    def _replay(self, prefix, q_step, encode=None) -> tuple[Sessions, AlongReference]:
        """Sessions that follow the fp32 trajectory with these prefix and step sessions, and the
        step session that records their figures."""
        requests, velocities = self.fp32_steps
        if self.evaluation.requests != requests:
            raise RuntimeError("the evaluation's requests changed since fp32 was recorded: nothing to measure along")
        paired = AlongReference(q_step, velocities)
        return self._sessions(prefix, paired, encode).replacing(vae_decoder=NoImage()), paired

    def images(self, transformer, encode=None) -> Images:
        return self.images_of(*torch_sessions(transformer), encode)

    def images_of(self, prefix, step, encode=None) -> Images:
        """The evaluation's images with the transformer's prefix and step run by these sessions
        (and the prompts encoded by `encode`); a NaN or Inf is counted (and drawn black), not a
        reason to stop measuring."""
        sessions = self._sessions(prefix, step, encode)
        raw = np.concatenate(
            [generate(r, self.runtime.facts, sessions, check_finite=False) for r in self.evaluation.requests]
        )
        finite = np.isfinite(raw)
        return Images(to_uint8(np.where(finite, raw, 0)), int(raw.size - finite.sum()))

    def per_step(self, transformer, encode=None) -> list[dict]:
        return self.per_step_of(*torch_sessions(transformer), encode)

    def per_step_of(self, q_prefix, q_step, encode=None) -> list[dict]:
        """Per-step velocity figures of these sessions along the fp32 trajectory."""
        sessions, paired = self._replay(q_prefix, q_step, encode)
        for request in self.evaluation.requests:
            generate(request, self.runtime.facts, sessions, check_finite=False)
        steps = len(paired.steps) // len(self.evaluation.requests)
        by_step = np.array(paired.steps).reshape(len(self.evaluation.requests), steps, 3)
        return [
            {
                "step": i + 1,
                "cosine_min": _finite_or_none(by_step[:, i, 0].min()),
                "cosine_mean": _finite_or_none(by_step[:, i, 0].mean()),
                "rel_error_mean": _finite_or_none(by_step[:, i, 1].mean()),
                "non_finite": int(by_step[:, i, 2].sum()),
            }
            for i in range(steps)
        ]

    def image_figures(self, images: Images) -> dict:
        prompts = self.evaluation.prompts
        return {
            "psnr_db": psnr(images.pixels, self.fp32_images.pixels),
            "ssim": ssim(images.pixels, self.fp32_images.pixels),
            "adherence": _adherence_or_none(images.pixels, prompts),
            "fp32_adherence": self.fp32_adherence,
            "non_finite": images.non_finite,
        }

    def encoder_figures(self, encode) -> dict:
        """The prompts' hidden states from `encode` against the fp32 encoder's, over real tokens."""
        figures = []
        for request in self.evaluation.requests:
            ours, fp32 = encode(request.prompts, []), self.runtime.sessions.encode(request.prompts, [])
            figures += [Comparison.of(a[m], b[m]) for a, b, m in zip(ours.embeds, fp32.embeds, fp32.mask)]
        return {
            "cosine_min": _finite_or_none(min(f.cosine for f in figures)),
            "rel_error_mean": _finite_or_none(np.mean([f.rel_l2 for f in figures])),
            "non_finite": sum(f.non_finite for f in figures),
        }

    def final_velocity_error(self, transformer) -> float:
        """Relative error of the first request's last step velocity along the fp32 trajectory."""
        sessions, paired = self._replay(*torch_sessions(transformer))
        generate(self.evaluation.requests[0], self.runtime.facts, sessions, check_finite=False)
        return paired.steps[-1][1]


@dataclass
class Images:
    """An evaluation's images as uint8, and how many values were NaN or Inf before conversion."""

    pixels: np.ndarray  # [N, H, W, 4]
    non_finite: int


def _finite_or_none(value) -> float | None:
    """A figure for JSON: NaN and Inf (a faulty model's) become null, counted beside it."""
    return float(value) if np.isfinite(value) else None


def _adherence_or_none(images, prompts):
    try:
        return adherence(images, prompts)["overall"]
    except ValueError:  # prompts outside the demo grammar: nothing to check against
        return None
