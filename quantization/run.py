"""`qiedge quantize`: calibrate -> choose layers (optionally down to a target PSNR) -> measure ->
write Q/DQ ONNX artifacts whose manifest records the recipe, the scales' hash and the accuracy.
A recipe with `encoder` weights also quantizes the condition encoder's weights, measured with
the transformer (the images and steps are those of both) and on its own (its hidden states)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
from qiedge.reference_model.model_dir import ModelDir
from qiedge.runtime.evaluate import prompt_set
from qiedge.runtime.hardware import detect
from qiedge.runtime.ort_int8 import EXACT_KERNELS

from .accuracy import Evaluation, Judge
from .calibrate import calibrate, linear_layers
from .encoder import encoder_quants, quantized_encoder
from .fake_quant import attention_quants, fake_quantized, layer_quants, quantize_transformer
from .onnx_attention import AttentionQdq
from .onnx_qdq import QdqPlan, is_condition_encoder
from .real_quant import on_device
from .recipe import Recipe

# One prompt whose blob flips a threshold moves adherence by 2 / (3 * count): with 40, by 1.7 points.
EVAL_PROMPTS = 40
EVAL_SIZE = 256
# How the runtime keeps int8 graphs exact on every CPU (runtime/ort_int8.py), recorded with them.
ONNXRUNTIME_INT8 = {
    "graph": "symmetric s8 x s8 Q/DQ, 8-bit weights (as TensorRT reads it)",
    "where_u8s8_kernels_saturate": {
        "cpus": "x86 without VNNI, found by a probe graph at load",
        "session_config": EXACT_KERNELS,
        "kernels": "u8 x u8, 32-bit sums: exact",
    },
}


def scales_digest(quants: dict, attention: dict | None = None) -> str:
    """sha256 over every layer's smoothing, activation scale and weight scales, and the FP8
    attention's scales."""
    h = hashlib.sha256()
    for name in sorted(attention or {}):
        h.update(name.encode() + np.asarray(attention[name], np.float64).tobytes())
    for name in sorted(quants):
        q = quants[name]
        h.update(name.encode() + q.weight_scale.tobytes() + str(q.act_scale).encode())  # act_scale None: weight-only
        if q.smooth is not None:
            h.update(q.smooth.tobytes())
    return h.hexdigest()


def sensitivity(judge: Judge, recipe: Recipe, calibration, layers: list[str]) -> dict[str, float]:
    """Final-velocity relative error with each layer alone quantized (largest first)."""
    errors = {
        name: judge.final_velocity_error(quantize_transformer(judge.reference, recipe, calibration, [name]))
        for name in layers
    }
    return dict(sorted(errors.items(), key=lambda kv: -kv[1]))


def choose_layers(
    judge: Judge,
    recipe: Recipe,
    calibration,
    layers: list[str],
    ranking: dict[str, float],
    target_psnr: float,
    encode=None,
) -> list[str]:
    """Keep the most sensitive layers in high precision, fewest first, until the image PSNR
    against fp32 (with the prompts encoded by `encode`, the shipped encoder) reaches the target."""
    if encode is not None:  # a quantized encoder bounds the PSNR with every layer kept
        alone = judge.image_figures(judge.images(judge.reference, encode))["psnr_db"]
        if alone < target_psnr:
            raise ValueError(
                f"--target-psnr {target_psnr:g} is out of reach: the quantized encoder alone gives {alone:.1f} dB"
            )
    chosen = list(layers)
    for kept in range(len(ranking) + 1):
        keep = set(list(ranking)[:kept])
        chosen = [n for n in layers if n not in keep]
        images = judge.images(quantize_transformer(judge.reference, recipe, calibration, chosen), encode)
        if judge.image_figures(images)["psnr_db"] >= target_psnr:
            return chosen
    return chosen


def _check_encoder(recipe: Recipe, components: list[str], target: str) -> None:
    if recipe.encoder is None:
        return
    if "condition_encoder" not in components:
        raise ValueError("encoder weights quantize the condition_encoder, which the components leave out")
    if target == "tensorrt" and recipe.encoder.format != "int4":
        # TensorRT's explicit quantization runs weights alone quantized in INT4 only.
        raise ValueError("TensorRT takes the condition encoder's weights quantized alone in int4 only")


def _encoder(judge: Judge, recipe: Recipe) -> tuple[dict, object | None, dict | None]:
    """The condition encoder's weight-only plan, the prompt encoder that computes it, and its record."""
    if recipe.encoder is None:
        return {}, None, None
    fp32 = judge.runtime.sessions.encode
    quants = encoder_quants(fp32.model, recipe.encoder)
    encode = quantized_encoder(fp32, quants, recipe.encoder.format)
    record = {
        **asdict(recipe.encoder),
        "layers_quantized": list(quants),
        "scales_hash": scales_digest(quants),
        "hidden_states": judge.encoder_figures(encode),
    }
    return quants, encode, record


def _on_gpu(judge: Judge, model_path, quants: dict, recipe: Recipe, log, encode=None) -> dict:
    """Where a GPU is present: the same plan on its real FP8 / INT8 matmuls (`gpu` in the record),
    or why it was not measured there."""
    import torch

    if not torch.cuda.is_available():
        return {}
    if recipe.activations == "none":
        return {"gpu": {"not_measured": "weight-only: the cuda backend has no real int4 matmul path"}}
    if recipe.activations == "dynamic":
        return {"gpu": {"not_measured": "dynamic activations: the cuda backend's real matmuls take static scales"}}
    log(f"measuring real {recipe.format} matmuls on {torch.cuda.get_device_name()}")
    try:
        return {"gpu": on_device(judge, model_path, quants, recipe.format, encode=encode)}
    except (ValueError, RuntimeError) as e:  # a GPU without the tensor cores, or out of memory
        return {"gpu": {"not_measured": str(e).splitlines()[0]}}


def quantize(
    model_path,
    recipe: Recipe,
    out,
    report_dir=None,
    target_psnr: float | None = None,
    eval_prompts: str = "held-out",
    components: list[str] | None = None,
    log=print,
    target: str = "onnx",
    target_options: dict | None = None,
) -> dict:
    from qiedge.export.run import components_of, export_artifacts
    from qiedge.export.targets import get_target

    model = ModelDir.open(model_path)
    components = components_of(get_target(target, **(target_options or {})), components)  # before any work
    evaluation = Evaluation.on(prompt_set(eval_prompts, EVAL_PROMPTS), EVAL_SIZE)  # a bad file fails before any work
    if recipe.activations == "dynamic" and target != "onnx":
        raise ValueError(f"recipe {recipe.name} (dynamic activations) runs on ONNX Runtime: use --target onnx")
    _check_encoder(recipe, components, target)
    calibration = calibrate(model.path, recipe, log) if recipe.calibrated else None
    judge = Judge(model.path, evaluation)
    encoder_q, encode, encoder_record = _encoder(judge, recipe)
    all_layers = list(linear_layers(judge.reference))
    layers = recipe.quantized_layers(all_layers, model.transformer.num_layers)
    ranking = None
    if target_psnr is not None or report_dir is not None:
        log(f"per-layer sensitivity over {len(layers)} layers")
        ranking = sensitivity(judge, recipe, calibration, layers)
    if target_psnr is not None:
        layers = choose_layers(judge, recipe, calibration, layers, ranking, target_psnr, encode)
        recipe = recipe.keeping(
            sorted(set(recipe.quantized_layers(all_layers, model.transformer.num_layers)) - set(layers))
        )
    quants = layer_quants(judge.reference, recipe, calibration, layers)  # the fake-quant model's and the graph's
    attention = attention_quants(judge.reference, recipe, calibration) if calibration else {}
    quantized = fake_quantized(judge.reference, quants, recipe.format, attention)
    images = judge.images(quantized, encode)
    accuracy = {
        "per_step": judge.per_step(quantized, encode),
        **judge.image_figures(images),
        "evaluation": {"prompts": eval_prompts, "count": len(judge.evaluation.prompts), "size": EVAL_SIZE},
        "measured_on": {"cpu": detect().summary(), "by": "the fake-quant torch model (the graph's arithmetic)"},
        **_on_gpu(judge, model.path, quants, recipe, log, encode),
    }
    record = {
        "recipe": json.loads(recipe.to_json()),
        "format": recipe.format,
        "layers_quantized": layers,
        "layers_high_precision": [n for n in all_layers if n not in layers],
        "attention_fp8": list(attention),
        "calibration": calibration.settings if calibration else None,
        "calibration_hash": calibration.digest() if calibration else None,
        "scales_hash": scales_digest(quants, attention),
        "accuracy": accuracy,
        **({"encoder": encoder_record} if encoder_record else {}),
        **({"onnxruntime_int8": ONNXRUNTIME_INT8} if recipe.format == "int8" else {}),
    }
    faults = accuracy["non_finite"] + sum(s["non_finite"] for s in accuracy["per_step"])
    faults += encoder_record["hidden_states"]["non_finite"] if encoder_record else 0
    if faults:  # measured to the end and reported, but no artifacts of a model that makes NaN
        where = "; the report is in " + str(report_dir) if report_dir is not None else " (pass --report to see where)"
        if report_dir is not None:
            from .report import write_report

            write_report(Path(report_dir), record, ranking, judge, images)
        raise ValueError(f"the {recipe.format} model produced {faults} NaN / Inf values{where}; nothing exported")
    log("exporting Q/DQ graphs")
    passes = [
        QdqPlan(quants, recipe.format).as_pass(record),
        *([AttentionQdq(attention).as_pass()] if attention else []),
    ]
    if encoder_record:
        encoder_plan = QdqPlan(encoder_q, recipe.encoder.format, applies_to=is_condition_encoder)
        passes.append(encoder_plan.as_pass({**record, "scales_hash": encoder_record["scales_hash"]}))
    extra = {"precision": recipe.format, "quantization": record}
    export_artifacts(
        out,
        target,
        model=model,
        components=components,
        passes=passes,
        extra=extra,
        target_options=target_options,
        extra_files={"recipe.json": recipe.to_json()},
    )
    if report_dir is not None:
        from .report import write_report

        write_report(Path(report_dir), record, ranking, judge, images)
    return record
