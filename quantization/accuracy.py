"""What quantization costs, measured the way deployers need it: per-step velocity cosine and
relative error along the fp32 trajectory, final-image PSNR/SSIM against fp32, demo-model
adherence, and per-layer sensitivity (one layer quantized at a time)."""

from __future__ import annotations

from dataclasses import dataclass

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


class PairedPrefix:
    """Runs the fp32 and quantized prefix on the same feeds; returns both caches, the quantized
    one under `quantized_*` names, which the sampler hands to every step with the rest."""

    def __init__(self, reference, quantized):
        self.reference, self.quantized = reference, quantized

    def run(self, feeds):
        quantized = self.quantized.run(feeds)
        return {**self.reference.run(feeds), **{f"quantized_{k}": v for k, v in quantized.items()}}


class PairedStep:
    """Follows the fp32 trajectory; at every step also runs the quantized model on the same
    latents (with its own K/V) and records how far its velocity is from fp32's."""

    def __init__(self, reference, quantized):
        self.reference, self.quantized = reference, quantized
        self.steps: list[tuple[float, float]] = []

    def run(self, feeds):
        expected = self.reference.run(feeds)["velocity"]
        cache = {k.removeprefix("quantized_"): v for k, v in feeds.items() if k.startswith("quantized_")}
        actual = self.quantized.run({**feeds, **cache})["velocity"]
        figures = Comparison.of(actual, expected)
        self.steps.append((figures.cosine, figures.rel_l2))
        return {"velocity": expected}


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
        self.fp32_images = self.images(self.reference)
        self.fp32_adherence = _adherence_or_none(self.fp32_images, evaluation.prompts)

    def _sessions(self, prefix, step) -> Sessions:
        return self.runtime.sessions.replacing(transformer_prefix=prefix, transformer_step=step)

    def images(self, transformer) -> np.ndarray:
        return self.images_of(*torch_sessions(transformer))

    def images_of(self, prefix, step) -> np.ndarray:
        """The evaluation's images with the transformer's prefix and step run by these sessions."""
        sessions = self._sessions(prefix, step)
        return np.concatenate([to_uint8(generate(r, self.runtime.facts, sessions)) for r in self.evaluation.requests])

    def per_step(self, transformer) -> list[dict]:
        return self.per_step_of(*torch_sessions(transformer))

    def per_step_of(self, q_prefix, q_step) -> list[dict]:
        """Per-step velocity figures of these sessions along the fp32 trajectory."""
        ref_prefix, ref_step = torch_sessions(self.reference)
        paired_prefix = PairedPrefix(ref_prefix, q_prefix)
        paired = PairedStep(ref_step, q_step)
        sessions = self._sessions(paired_prefix, paired)
        for request in self.evaluation.requests:
            generate(request, self.runtime.facts, sessions)
        steps = len(paired.steps) // len(self.evaluation.requests)
        by_step = np.array(paired.steps).reshape(len(self.evaluation.requests), steps, 2)
        return [
            {
                "step": i + 1,
                "cosine_min": float(by_step[:, i, 0].min()),
                "cosine_mean": float(by_step[:, i, 0].mean()),
                "rel_error_mean": float(by_step[:, i, 1].mean()),
            }
            for i in range(steps)
        ]

    def image_figures(self, images: np.ndarray) -> dict:
        prompts = self.evaluation.prompts
        return {
            "psnr_db": psnr(images, self.fp32_images),
            "ssim": ssim(images, self.fp32_images),
            "adherence": _adherence_or_none(images, prompts),
            "fp32_adherence": self.fp32_adherence,
        }

    def final_velocity_error(self, transformer, request: Request) -> float:
        """Relative error of the last step's velocity along the fp32 trajectory."""
        ref_prefix, ref_step = torch_sessions(self.reference)
        q_prefix, q_step = torch_sessions(transformer)
        paired_prefix = PairedPrefix(ref_prefix, q_prefix)
        paired = PairedStep(ref_step, q_step)
        generate(request, self.runtime.facts, self._sessions(paired_prefix, paired))
        return paired.steps[-1][1]


def _adherence_or_none(images, prompts):
    try:
        return adherence(images, prompts)["overall"]
    except ValueError:  # prompts outside the demo grammar: nothing to check against
        return None
