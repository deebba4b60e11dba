"""The cuda backend's code paths that run on the CPU too: the sampler on the backend's own
tensors, the bf16 model, and the real FP8 / INT8 matmuls against the fake-quant model whose
arithmetic they must reproduce. What needs the GPU itself (compiled blocks, flash attention,
the tensor cores, the speed) is measured by bench/gpu.py."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
from qiedge.core.metrics import psnr
from qiedge.core.tiles import Tiling
from qiedge.export.specs import SPECS
from qiedge.quantization.accuracy import torch_sessions
from qiedge.quantization.calibrate import linear_layers
from qiedge.quantization.fake_quant import QuantLinear, fake_quantized
from qiedge.quantization.real_quant import RealQuantLinear, quantizer, real_quantized
from qiedge.quantization.recipe import Recipe
from qiedge.quantization.scales import LayerQuant
from qiedge.reference_model.model_dir import demo_model_dir
from qiedge.runtime.backends import cuda
from qiedge.runtime.backends.cuda import CudaBackend, DeviceArrays, DeviceSession
from qiedge.runtime.runner import open_runtime
from qiedge.runtime.sampler import Request, Sessions, generate, to_uint8
from qiedge.runtime.tiled_vae import TiledDecoder

from .conftest import rel_l2

REQUESTS = {
    "one prompt (no key padded: the unmasked path)": Request(["a red circle"], width=64, height=64, seed=3),
    "a batch of two lengths, with CFG (the masked path)": Request(
        ["a red circle", "two small blue squares on a green field"],
        width=64,
        height=96,
        seed=4,
        cfg=3.0,
        negative_prompt=" ",
    ),
}


class Recorded:
    """A session that records the type of every array it is fed."""

    def __init__(self, session, seen: set):
        self.session, self.seen = session, seen

    def run(self, feeds):
        self.seen.update(type(v) for v in feeds.values())
        return self.session.run(feeds)


@pytest.mark.parametrize("case", REQUESTS)
def test_the_sampler_on_tensors_draws_what_it_draws_on_numpy(tiny_dir, case):
    runtime = open_runtime(model=tiny_dir, backend="torch")
    on_host = generate(REQUESTS[case], runtime.facts, runtime.sessions)
    seen = set()
    cpu = torch.device("cpu")

    def load(component):
        spec = SPECS[component]
        module = spec.wrapper(runtime.backend.reference(spec.weights)).eval()
        return Recorded(DeviceSession(module, spec, torch.float32, cpu, component == "transformer_prefix"), seen)

    sessions = Sessions(runtime.sessions.encode, load, arrays=DeviceArrays(cpu))
    on_device = generate(REQUESTS[case], runtime.facts, sessions)
    assert np.abs(on_device - on_host).max() <= 1e-5
    step_feeds = seen - {np.ndarray}  # only the prefix's first feeds come from the host layout
    assert torch.Tensor in seen and step_feeds == {torch.Tensor}


def test_tiles_decode_on_device_tensors_as_on_numpy(tiny_dir):
    runtime = open_runtime(model=tiny_dir, backend="torch")
    spec = SPECS["vae_decoder"]
    module = spec.wrapper(runtime.backend.reference(spec.weights)).eval()
    device = DeviceSession(module, spec, torch.float32, torch.device("cpu"), keep_dtype=False)
    tiling = Tiling(4, 3)  # 64 px tiles every 48 px
    latents = np.random.default_rng(5).standard_normal((1, 64, 7, 13), dtype=np.float32)
    on_host = TiledDecoder(runtime.sessions["vae_decoder"], tiling).run({"latents": latents})["image"]
    arrays = DeviceArrays(torch.device("cpu"))
    on_device = TiledDecoder(device, tiling, arrays).run({"latents": arrays.put(latents)})["image"]
    assert isinstance(on_device, torch.Tensor) and on_device.shape == on_host.shape == (1, 4, 7 * 16, 13 * 16)
    np.testing.assert_array_equal(on_device.numpy(), on_host)  # the same module and blend, on tensors


@pytest.fixture(scope="module")
def demo_fp32():
    runtime = open_runtime(model=demo_model_dir(), backend="torch")
    request = Request(["a red circle above a blue square", "a green triangle"], width=256, height=256, seed=0)
    return request, to_uint8(generate(request, runtime.facts, runtime.sessions))


def _device_images(backend: CudaBackend, request: Request) -> np.ndarray:
    facts = open_runtime(model=demo_model_dir(), backend="torch").facts
    sessions = Sessions(backend.prompt_encoder(facts), backend.load, arrays=backend.arrays)
    return to_uint8(generate(request, facts, sessions))


def test_bf16_on_the_device_keeps_the_image(demo_fp32):
    request, expected = demo_fp32
    from qiedge.reference_model.model_dir import ModelDir

    backend = CudaBackend(ModelDir.open(demo_model_dir()), "bf16", device="cpu", compile=False)
    assert psnr(_device_images(backend, request), expected) >= 30


def _linear_and_quant(smooth: bool) -> tuple[torch.nn.Linear, LayerQuant, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(64, 48, bias=False)
    linear.weight.data = torch.randn(48, 64, generator=generator) * 0.1
    x = torch.randn(2, 5, 64, generator=generator)  # 10 rows: fewer than _int_mm takes, so padded
    factors = (torch.rand(64, generator=generator) + 0.5).numpy() if smooth else None
    return linear, LayerQuant(smooth=factors, act_scale=float(x.abs().max()) / 100), x


@pytest.mark.parametrize("fmt, smooth", [("fp8", False), ("int8", True), ("int8", False)])
def test_real_matmuls_equal_the_fake_quant_arithmetic(fmt, smooth):
    linear, quant, x = _linear_and_quant(smooth)
    real, fake = RealQuantLinear(linear, quant, fmt)(x), QuantLinear(linear, quant, fmt)(x)
    assert rel_l2(real, fake) <= 1e-6
    assert rel_l2(real, linear(x)) > 1e-4  # it did quantize


def test_a_cast_to_bf16_leaves_the_quantized_weights_and_scales_exact():
    linear, quant, x = _linear_and_quant(smooth=False)
    layer = RealQuantLinear(linear, quant, "fp8")
    before = {name: b.clone() for name, b in layer.named_buffers() if b is not None}
    layer.to(torch.bfloat16)
    for name, value in before.items():
        assert torch.equal(getattr(layer, name), value), name
    x = x.bfloat16()
    assert rel_l2(layer(x).float(), RealQuantLinear(linear, quant, "fp8")(x.float())) <= 4e-3  # bf16 rounding


# FP8 products are exact in fp32 and summed as the fake-quant matmul sums them. INT8 sums are exact
# integers where the fake-quant model sums rounded floats: each layer agrees within 1e-6 (above),
# and the rare activation that sits on a rounding boundary of the next layer flips by one step.
WHOLE_MODEL_REL_L2 = {"fp8": 1e-6, "int8": 2e-3}


@pytest.mark.parametrize("fmt", ["fp8", "int8"])
def test_the_real_quant_transformer_draws_what_the_fake_quant_one_draws(fmt, tiny_dir, transformer):
    """Every Linear planned alike: the real matmuls' images equal the fake-quant model's in fp32."""
    runtime = open_runtime(model=tiny_dir, backend="torch")
    quants = {name: LayerQuant(smooth=None, act_scale=0.02) for name in linear_layers(transformer)}
    real, unfit = real_quantized(copy.deepcopy(transformer), quants, fmt)
    assert not unfit

    def images(model):
        prefix, step = torch_sessions(model)
        sessions = runtime.sessions.replacing(transformer_prefix=prefix, transformer_step=step)
        return generate(REQUESTS["one prompt (no key padded: the unmasked path)"], runtime.facts, sessions)

    expected = images(fake_quantized(transformer, quants, fmt))
    assert rel_l2(images(real), expected) <= WHOLE_MODEL_REL_L2[fmt]
    assert rel_l2(expected, images(transformer)) > 1e-3  # it did quantize


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["fp8"])  # INT8's arithmetic is held to the fake-quant model's above
def test_quantized_on_the_device_keeps_the_image(fmt, demo_fp32):
    from qiedge.reference_model.model_dir import ModelDir

    request, expected = demo_fp32
    recipe = Recipe.load(fmt)
    recipe = replace(recipe, calibration_set=replace(recipe.calibration_set, count=8, cfg_prompts=1))
    backend = CudaBackend(
        ModelDir.open(demo_model_dir()), fmt, quantizer(demo_model_dir(), recipe, lambda m: None, "cpu"), "cpu", False
    )
    layers = [m for m in backend.reference("transformer").modules() if isinstance(m, RealQuantLinear)]
    assert layers and all(m.fmt == fmt for m in layers)
    assert psnr(_device_images(backend, request), expected) >= 30


def test_refusals(tiny_dir, monkeypatch):
    from qiedge.reference_model.model_dir import ModelDir

    model = ModelDir.open(tiny_dir)
    with pytest.raises(ValueError, match="fp8 needs the quantization recipe's scales"):
        CudaBackend(model, "fp8", device="cpu")
    with pytest.raises(ValueError, match="runs bf16, fp8, int8"):
        CudaBackend(model, "fp16", device="cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="needs an NVIDIA GPU"):
        CudaBackend(model, "bf16")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "NVIDIA A100")
    with pytest.raises(ValueError, match=r"NVIDIA A100 \(compute capability 8.0\) cannot run fp8: it needs 8.9"):
        cuda._check_gpu("fp8")
    cuda._check_gpu("int8")  # an A100 has int8 tensor cores
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda: (7, 5))
    with pytest.raises(ValueError, match="cannot run int8: it needs 8.0"):  # bf16 around them
        cuda._check_gpu("int8")


def test_the_report_measures_real_matmuls_beside_the_emulation(tiny_dir, transformer):
    """`quantize --report` on a GPU: the same plan's figures from real FP8 matmuls (here on the CPU)."""
    from qiedge.quantization.accuracy import Evaluation, Judge
    from qiedge.quantization.real_quant import on_device

    judge = Judge(tiny_dir, Evaluation.on(["a red circle", "a blue square"], 64))
    quants = {n: LayerQuant(smooth=None, act_scale=0.02) for n in linear_layers(transformer) if "blocks" in n}
    real = on_device(judge, tiny_dir, quants, "fp8", device="cpu")
    emulated = judge.per_step(fake_quantized(judge.reference, quants, "fp8"))
    assert real["device"] == "cpu" and real["arithmetic"] == "fp8 matmuls, bf16 elsewhere"
    assert len(real["per_step"]) == len(emulated)
    # Measured: 40.4 dB and cosines >= 0.9975 (bf16 around the FP8 matmuls), 51.1 dB emulated in fp32.
    assert real["psnr_db"] >= 35 and min(s["cosine_min"] for s in real["per_step"]) >= 0.99
