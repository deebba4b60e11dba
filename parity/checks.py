"""Parity of exported artifacts against the PyTorch reference: the checks behind `qiedge parity`
and the pytest tests alike.

Every component runs on fresh random inputs at several resolutions and prompt lengths on both
backends; every output is compared (relative L2, max abs, cosine) and every failure collected.
End to end, the same request runs on the artifacts and on the reference; the final images are
compared by PSNR.
"""

from __future__ import annotations

import numpy as np
from qiedge.core.metrics import Comparison, psnr
from qiedge.export.cases import PREFIX, CaseContext
from qiedge.export.specs import SPECS
from qiedge.runtime.backends import Session

# The project's numerics bounds: fp32 graphs <= 1e-5 relative L2 per component; fp16 graphs are judged on the final
# image (PSNR >= 35 dB), INT8 / FP8 ones on velocity cosine >= 0.99 (relative error about 0.14)
# and image PSNR >= 30 dB; their per-component figures are reported against the looser bounds.
# Those bounds say nothing of weight-only INT4; these are qiedge's own, looser still.
COMPONENT_REL_L2 = {"fp32": 1e-5, "fp16": 1e-2, "int8": 0.15, "fp8": 0.15, "int4": 0.3}
IMAGE_PSNR = {"fp32": 50.0, "fp16": 35.0, "int8": 30.0, "fp8": 30.0, "int4": 25.0}


def compare_component(
    name: str, ours: Session, reference: Session, cases, threshold: float, cache_from: Session | None = None
) -> dict:
    """Run every case on both sessions; report each output's figures and whether all pass.

    A case that carries its producer's inputs (the step's prefix) gets that cache from the
    reference's own producer session, so both sides consume the same K/V.
    """
    results, failures = [], []
    for case, feeds in cases:
        if PREFIX in feeds:
            feeds.update(cache_from.run(feeds.pop(PREFIX)))
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


def case_context(artifacts, model) -> CaseContext:
    """What the specs' case generators need to know about a model and its artifacts."""
    return CaseContext(artifacts.facts, model.transformer.context_in_dim, model.vae.in_channels)


def run_parity(artifacts_path, model_path, end_to_end: bool = True) -> dict:
    """Every exported component against the reference, then whole images; collects all failures."""
    from qiedge.core.artifacts import Artifacts
    from qiedge.reference_model.model_dir import ModelDir
    from qiedge.runtime.backends.onnx_runtime import OnnxRuntimeBackend
    from qiedge.runtime.backends.pytorch import TorchBackend

    artifacts, model = Artifacts.open(artifacts_path), ModelDir.open(model_path)
    precision = artifacts.manifest["precision"]
    ours, reference = OnnxRuntimeBackend(artifacts), TorchBackend(model)
    context = case_context(artifacts, model)
    components = {}
    for name in artifacts.components:
        spec = SPECS[name]
        cache_from = reference.load(spec.cache_from) if spec.cache_from else None
        threshold = COMPONENT_REL_L2[artifacts.component(name)["precision"]]
        cases = spec.cases(context)
        components[name] = compare_component(name, ours.load(name), reference.load(name), cases, threshold, cache_from)
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
