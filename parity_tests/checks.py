"""Parity of exported artifacts against the PyTorch reference: the checks behind `qiedge parity`
and the pytest tests alike.

Every component runs on fresh random inputs at several resolutions and prompt lengths on both
backends; every output is compared (relative L2, max abs, cosine) and every failure collected.
End to end, the same request runs on the artifacts and on the reference; the final images are
compared by PSNR.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from qiedge.reference_model.layout import build_layout, rope_tables
from qiedge.runtime.backends import Session
from qiedge.runtime.evaluate import psnr

# DESIGN.md: fp32 graphs <= 1e-5 relative L2 per component; fp16 graphs are judged on the final
# image (PSNR >= 35 dB), INT8 / FP8 ones on velocity cosine >= 0.99 (relative error about 0.14)
# and image PSNR >= 30 dB; their per-component figures are reported against the looser bounds.
# DESIGN.md sets no bound for weight-only INT4; these are qiedge's own, looser still.
COMPONENT_REL_L2 = {"fp32": 1e-5, "fp16": 1e-2, "int8": 0.15, "fp8": 0.15, "int4": 0.3}
IMAGE_PSNR = {"fp32": 50.0, "fp16": 35.0, "int8": 30.0, "fp8": 30.0, "int4": 25.0}

PROMPTS = (
    ["a red circle"],
    ["a red circle on the left on a blue background", "hi"],
    ["the word HELLO in white on a black background, " * 12],
)
TRANSFORMER_CASES = (
    # (batch, text length, valid lengths, condition grids, target grid)
    (2, 11, [11, 6], [], (4, 6)),
    (1, 40, [40], [], (8, 8)),
    (1, 20, [20], [(4, 4)], (6, 4)),
)
VAE_GRIDS = ((4, 4), (2, 6), (8, 4))


@dataclass
class Comparison:
    rel_l2: float
    max_abs: float
    cosine: float

    @classmethod
    def of(cls, actual: np.ndarray, expected: np.ndarray) -> Comparison:
        a, e = (np.asarray(x, dtype=np.float64).ravel() for x in (actual, expected))
        if a.shape != e.shape:
            raise ValueError(f"shape {actual.shape} vs reference {expected.shape}")
        norm = np.linalg.norm(e)
        return cls(
            rel_l2=float(np.linalg.norm(a - e) / norm) if norm else float(np.linalg.norm(a)),
            max_abs=float(np.abs(a - e).max(initial=0.0)),
            cosine=float(a @ e / (np.linalg.norm(a) * norm)) if norm and np.linalg.norm(a) else 1.0,
        )


def encoder_cases(tokenizer):
    for prompts in PROMPTS:
        t = tokenizer(prompts)
        yield (
            f"{len(prompts)}x{t.input_ids.shape[1]} tokens",
            {"input_ids": t.input_ids, "attention_mask": t.attention_mask, "position_ids": t.position_ids},
        )


def transformer_cases(facts, context: int, component: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    channels = facts.latent_channels
    for batch, text_len, lengths, conditions, (h, w) in TRANSFORMER_CASES:
        text = rng.standard_normal((batch, text_len, context), dtype=np.float32)
        mask = np.zeros((batch, text_len), dtype=bool)
        for b, n in enumerate(lengths):
            mask[b, :n] = True
            text[b, n:] = 0
        slots = np.zeros(text_len, dtype=bool)
        start = 3
        for ch, cw in conditions:
            slots[start : start + ch * cw // 4] = True
            start += ch * cw // 4 + 1
        shapes = [(1, ch, cw) for ch, cw in conditions] + [(1, h, w)]
        layout = build_layout(slots, mask, shapes)
        cos, sin = rope_tables(layout.positions, facts.axes_dims_rope)
        p = layout.prefix_len
        prefix = {
            "text": text,
            "cond_latents": rng.standard_normal((batch, sum(a * b for a, b in conditions), channels), dtype=np.float32),
            "prefix_gather": layout.prefix_gather,
            "segment_ids": layout.segment_ids,
            "key_valid": layout.prefix_key_valid,
        }
        step = {
            "latents": rng.standard_normal((batch, h * w, channels), dtype=np.float32),
            "timestep": rng.uniform(0.02, 1.0, batch).astype(np.float32),
        }
        name = f"b{batch} text {text_len} cond {len(conditions)} target {h}x{w}"
        if component == "transformer_prefix":
            yield name, {**prefix, "rope_cos": cos[:p], "rope_sin": sin[:p]}
        elif component == "transformer":
            yield (
                name,
                {
                    **step,
                    **prefix,
                    "prefix_rope_cos": cos[:p],
                    "prefix_rope_sin": sin[:p],
                    "target_rope_cos": cos[p:],
                    "target_rope_sin": sin[p:],
                },
            )
        else:
            # The step consumes a real cache: the reference's own prefix K/V for this layout.
            yield (
                name,
                {
                    **step,
                    "prefix": {**prefix, "rope_cos": cos[:p], "rope_sin": sin[:p]},
                    "key_valid": layout.prefix_key_valid,
                    "rope_cos": cos[p:],
                    "rope_sin": sin[p:],
                },
            )


def vae_cases(component: str, channels: int, image_channels: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for h, w in VAE_GRIDS:
        if component == "vae_decoder":
            yield f"{h}x{w} latents", {"latents": rng.standard_normal((1, channels, h, w), dtype=np.float32)}
        else:
            image = rng.uniform(-1, 1, (1, image_channels, 16 * h, 16 * w)).astype(np.float32)
            yield f"{16 * h}x{16 * w} image", {"image": image}


def compare_component(
    name: str, ours: Session, reference: Session, cases, threshold: float, reference_prefix: Session | None = None
) -> dict:
    """Run every case on both sessions; report each output's figures and whether all pass."""
    results, failures = [], []
    for case, feeds in cases:
        if "prefix" in feeds:  # transformer_step: build its cache with the reference prefix graph
            cache = reference_prefix.run(feeds.pop("prefix"))
            feeds.update(past_keys=cache["past_keys"], past_values=cache["past_values"])
        expected, actual = reference.run(feeds), ours.run(feeds)
        if "attention_mask" in feeds:
            # Left-padding rows attend to nothing and are dropped before the transformer: compare real tokens only.
            keep = feeds["attention_mask"].astype(bool)
            expected, actual = ({k: v[keep] for k, v in d.items()} for d in (expected, actual))
        outputs = {}
        for out, value in expected.items():
            c = Comparison.of(actual[out], value)
            outputs[out] = vars(c)
            if not c.rel_l2 <= threshold:
                failures.append(f"{case} {out}: relative L2 {c.rel_l2:.2e} > {threshold:.0e}")
        results.append({"case": case, "outputs": outputs})
    worst = max(o["rel_l2"] for r in results for o in r["outputs"].values())
    return {
        "component": name,
        "threshold_rel_l2": threshold,
        "worst_rel_l2": worst,
        "cases": results,
        "failures": failures,
        "passed": not failures,
    }


def cached_step_velocities(backend, cases) -> list[np.ndarray]:
    """For each (prefix feeds, step feeds) case: the step's velocity against the same backend's
    own prefix K/V, as the sampler runs them."""
    prefix, step = backend.load("transformer_prefix"), backend.load("transformer_step")
    return [step.run({**feeds, **prefix.run(prefix_feeds)})["velocity"] for prefix_feeds, feeds in cases]


def end_to_end_requests():
    from PIL import Image
    from qiedge.runtime.sampler import Request

    pixels = np.random.default_rng(0).integers(0, 256, (48, 80, 4), dtype=np.uint8)
    return {
        "t2i 64x64 b1": Request(["a red circle on the left"], width=64, height=64, seed=1),
        "t2i 96x64 b2 padded": Request(["a red circle on the left", "hi"], width=96, height=64, seed=2),
        "t2i cfg": Request(["a star"], width=64, height=32, seed=3, cfg=3.0, negative_prompt=" "),
        "edit": Request(
            ["make it blue"], width=64, height=64, seed=4, images=[Image.fromarray(pixels, "RGBA")], resolution=64
        ),
    }


def compare_end_to_end(artifacts_path, model_path, threshold_psnr: float) -> dict:
    from qiedge.runtime.runner import open_runtime
    from qiedge.runtime.sampler import generate

    exported = open_runtime(artifacts=artifacts_path, backend="onnxruntime")
    editing = open_runtime(model=model_path, artifacts=artifacts_path, backend="onnxruntime", encoder_backend="torch")
    reference = open_runtime(model=model_path, backend="torch")
    results, failures = [], []
    for name, request in end_to_end_requests().items():
        ours = generate(request, exported.facts, (editing if request.images else exported).sessions)
        expected = generate(request, reference.facts, reference.sessions)
        figures = {"psnr_db": psnr(ours, expected, peak=1.0), **vars(Comparison.of(ours, expected))}
        results.append({"case": name, **figures})
        if not figures["psnr_db"] >= threshold_psnr:
            failures.append(f"end to end {name}: PSNR {figures['psnr_db']:.1f} dB < {threshold_psnr} dB")
    return {"threshold_psnr_db": threshold_psnr, "cases": results, "failures": failures, "passed": not failures}


def run_parity(artifacts_path, model_path, end_to_end: bool = True) -> dict:
    """Every exported component against the reference, then whole images; collects all failures."""
    from qiedge.reference_model.model_dir import ModelDir
    from qiedge.runtime.artifacts import Artifacts
    from qiedge.runtime.backends import OnnxRuntimeBackend, TorchBackend
    from qiedge.runtime.tokenizer import PromptTokenizer

    artifacts, model = Artifacts.open(artifacts_path), ModelDir.open(model_path)
    precision = artifacts.manifest["precision"]
    ours, reference = OnnxRuntimeBackend(artifacts), TorchBackend(model)
    facts = artifacts.facts
    components = {}
    for name in artifacts.components:
        if name == "condition_encoder":
            cases = encoder_cases(PromptTokenizer(facts.tokenizer_json))
        elif name.startswith("transformer"):
            cases = transformer_cases(facts, model.transformer.context_in_dim, name)
        else:
            cases = vae_cases(name, facts.latent_channels, model.vae.in_channels)
        prefix = reference.load("transformer_prefix") if name == "transformer_step" else None
        threshold = COMPONENT_REL_L2[artifacts.component(name)["precision"]]
        components[name] = compare_component(name, ours.load(name), reference.load(name), cases, threshold, prefix)
    report = {
        "artifacts": str(artifacts.path),
        "model": str(model.path),
        "precision": precision,
        "components": components,
    }
    if end_to_end:
        report["end_to_end"] = compare_end_to_end(artifacts.path, model.path, IMAGE_PSNR[precision])
    failures = [f for c in components.values() for f in c["failures"]]
    failures += report.get("end_to_end", {}).get("failures", [])
    report.update(failures=failures, passed=not failures)
    return report
