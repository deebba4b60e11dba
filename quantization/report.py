"""The accuracy report of `qiedge quantize --report DIR`: report.json, and report.html with the
fp32 and quantized images side by side and a heatmap of their difference."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from qiedge.core.files import write_atomic


def _png(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def heatmap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| over RGB, scaled so the largest difference is bright red."""
    diff = np.abs(a[..., :3].astype(np.float32) - b[..., :3].astype(np.float32)).mean(-1)
    level = (255 * diff / max(float(diff.max()), 1.0)).astype(np.uint8)
    return np.stack([level, np.zeros_like(level), 255 - level], axis=-1)


def write_report(folder: Path, record: dict, ranking: dict | None, judge, images) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = {**record, "sensitivity": ranking}
    write_atomic(folder / "report.json", json.dumps(data, indent=2) + "\n")
    a = record["accuracy"]
    rows = "".join(
        f"<tr><td>{html.escape(p)}</td><td><img src='{_png(f)}'></td><td><img src='{_png(q)}'></td>"
        f"<td><img src='{_png(heatmap(f, q))}'></td></tr>"
        for p, f, q in zip(judge.evaluation.prompts, judge.fp32_images.pixels, images.pixels)
    )
    steps = "".join(
        f"<tr><td>{s['step']}</td><td>{_figure(s['cosine_min'], '.5f')}</td>"
        f"<td>{_figure(s['rel_error_mean'], '.4f')}</td><td>{s['non_finite']}</td></tr>"
        for s in a["per_step"]
    )
    layers = "".join(f"<tr><td>{html.escape(n)}</td><td>{e:.4f}</td></tr>" for n, e in (ranking or {}).items())

    def adherence(v):
        return "n/a" if v is None else f"{100 * v:.1f}%"

    write_atomic(
        folder / "report.html",
        f"""<!doctype html><meta charset="utf-8"><title>qiedge {record["format"]} report</title>
<style>body{{font-family:sans-serif}} img{{width:128px;image-rendering:pixelated}} td{{padding:2px 8px}}</style>
<h1>{html.escape(record["recipe"]["name"])}: {record["format"]}</h1>
<p>PSNR {a["psnr_db"]:.2f} dB, SSIM {a["ssim"]:.4f} against fp32; adherence {adherence(a["adherence"])}
(fp32 {adherence(a["fp32_adherence"])}); {len(record["layers_quantized"])} layers quantized,
{len(record["layers_high_precision"])} kept in high precision. Measured on {html.escape(a["measured_on"]["cpu"])},
by {html.escape(a["measured_on"]["by"])}.</p>
{_non_finite_line(a)}
{_encoder_line(record.get("encoder"))}
{_gpu_line(a.get("gpu"))}
<h2>Per-step velocity along the fp32 trajectory</h2>
<table><tr><th>step</th><th>cosine (min)</th><th>relative error (mean)</th><th>NaN / Inf values</th></tr>{steps}</table>
<h2>Images: fp32, {record["format"]}, difference</h2><table>{rows}</table>
<h2>Per-layer sensitivity (final-velocity relative error, one layer quantized)</h2><table>{layers}</table>
""",
    )


def _encoder_line(encoder: dict | None) -> str:
    """The condition encoder's weight-only quantization, whose cost the figures above include."""
    if encoder is None:
        return "<p>The condition encoder is not quantized.</p>"
    h = encoder["hidden_states"]
    return (
        f"<p>Condition encoder: {len(encoder['layers_quantized'])} layers {html.escape(encoder['format'])} "
        f"weight-only (included in every figure here); its prompts' hidden states against fp32: cosine "
        f"{_figure(h['cosine_min'], '.5f')} at worst, relative error {_figure(h['rel_error_mean'], '.4f')} "
        "on average.</p>"
    )


def _gpu_line(gpu: dict | None) -> str:
    """The real matmuls' figures beside the emulation's, where `quantize` ran on a GPU."""
    if gpu is None:
        return "<p>No GPU here: the figures above are the emulation's only.</p>"
    if "not_measured" in gpu:
        return f"<p>Not measured on the GPU: {html.escape(gpu['not_measured'])}</p>"
    return (
        f"<p>On {html.escape(gpu['device'])} ({html.escape(gpu['arithmetic'])}): PSNR {gpu['psnr_db']:.2f} dB, "
        f"SSIM {gpu['ssim']:.4f}, lowest per-step velocity cosine {_figure(lowest_cosine(gpu['per_step']), '.5f')}.</p>"
    )


def lowest_cosine(per_step: list[dict]) -> float | None:
    """The lowest per-step velocity cosine; None where a step's cosine was NaN (counted there)."""
    cosines = [s["cosine_min"] for s in per_step]
    return None if None in cosines else min(cosines)


def _figure(value: float | None, spec: str) -> str:
    return "NaN / Inf" if value is None else format(value, spec)


def _non_finite_line(accuracy: dict) -> str:
    """A faulty quantization is measured to the end and its NaN / Inf counted, not stopped at."""
    images = accuracy.get("non_finite", 0)
    steps = sum(s["non_finite"] for s in accuracy["per_step"])
    if not images and not steps:
        return "<p>No NaN or Inf anywhere.</p>"
    return f"<p><b>NaN / Inf: {steps} values in the velocities, {images} in the images</b> (drawn black).</p>"


MOST_SENSITIVE_SHARE = 0.1


def most_sensitive(report: Path, share: float = MOST_SENSITIVE_SHARE) -> tuple[str, ...]:
    """The layers a report ranks most sensitive (the first `share` of its ranking, at least one)."""
    try:
        ranking = json.loads(Path(report).read_text())["sensitivity"]
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{report} is not a `qiedge quantize --report` report.json: {e}") from None
    if not ranking:
        raise ValueError(f"{report} has no per-layer sensitivity ranking")
    return tuple(list(ranking)[: max(1, round(share * len(ranking)))])
