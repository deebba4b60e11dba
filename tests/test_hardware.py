"""CPU detection and the path `--backend auto` picks, with the features of each CPU kind faked;
ONNX Runtime's int8 probe on the CPU at hand."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from qiedge.runtime import auto, hardware, ort_int8
from qiedge.runtime.hardware import Cpu, parse_cpuinfo

BIG_JOB = 1e13  # the small preset at 1024 px, 4 steps
TINY_JOB = 1e9

# /proc/cpuinfo as each kind of machine writes it (flags cut to what matters, plus noise).
CPUINFO = {
    "sapphire-rapids": (
        "Intel(R) Xeon(R) Platinum 8481C",
        "flags : fpu sse4_2 avx fma avx2 avx512f avx512_vnni avx_vnni avx512_bf16 amx_bf16 amx_tile amx_int8",
    ),
    "skylake-xeon": ("Intel(R) Xeon(R) CPU @ 2.00GHz", "flags : fpu sse4_2 avx fma avx2 avx512f avx512dq avx512bw"),
    "zen5-epyc": ("AMD EPYC", "flags : fpu sse4_2 avx fma avx2 avx512f avx512_bf16 avx512_vnni avx_vnni"),
    "haswell": ("Intel(R) Core(TM) i7-4770", "flags : fpu sse4_2 avx fma avx2"),
}
GRAVITON3 = "processor : 0\nBogoMIPS : 2100.00\nFeatures : fp asimd asimddp sha512 sve i8mm bf16\nCPU part : 0xd40\n"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from qiedge.reference_model import presets
    from qiedge.reference_model.model_dir import init_model_dir

    return init_model_dir(presets.TINY, tmp_path_factory.mktemp("hardware") / "tiny", seed=0)


def cpu(kind: str) -> Cpu:
    name, flags = CPUINFO[kind]
    model, features = parse_cpuinfo(f"processor : 0\nmodel name : {name}\n{flags}\n")
    return Cpu(model, "x86_64", 2, features)


def test_cpuinfo_is_read_for_what_decides_speed():
    assert cpu("sapphire-rapids").model == "Intel(R) Xeon(R) Platinum 8481C"
    assert cpu("sapphire-rapids").bf16_unit == "AMX-BF16" and cpu("sapphire-rapids").int8_unit == "AMX-INT8"
    assert cpu("zen5-epyc").bf16_unit == "AVX512-BF16" and cpu("zen5-epyc").int8_unit == "AVX512-VNNI"
    assert cpu("skylake-xeon").bf16_unit is None and cpu("skylake-xeon").int8_unit is None
    assert cpu("skylake-xeon").vector_isa == "AVX-512" and cpu("haswell").vector_isa == "AVX2"
    _, features = parse_cpuinfo(GRAVITON3)
    graviton = Cpu("", "arm64", 2, features)
    assert features == {"dotprod", "sve", "i8mm", "bf16"}
    assert graviton.bf16_unit == "Arm BF16" and graviton.int8_unit == "Arm I8MM"
    assert "bf16 emulated" in cpu("haswell").summary()


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("sapphire-rapids", "torch-bf16"),
        ("zen5-epyc", "torch-bf16"),
        ("skylake-xeon", "torch-compile"),
        ("haswell", "torch-compile"),
    ],
)
def test_auto_picks_the_fast_path_for_each_cpu(kind, expected):
    choice = auto.choose(cpu(kind), BIG_JOB)
    assert choice.backend == expected
    assert ("natively" in choice.reason) == (expected == "torch-bf16")
    # A job too small to pay for compiling runs eager everywhere.
    assert auto.choose(cpu(kind), TINY_JOB).backend == "torch"
    # A visible NVIDIA GPU runs any job.
    assert auto.choose(cpu(kind), TINY_JOB, "NVIDIA H100 80GB HBM3") == auto.Choice(
        "cuda", "NVIDIA H100 80GB HBM3 is visible"
    )


def test_forcing_bf16_warns_only_where_it_is_emulated():
    assert "2.4x slower" in auto.bf16_warning(cpu("skylake-xeon"))
    assert auto.bf16_warning(cpu("sapphire-rapids")) is None


def test_runtime_reports_its_choice(tiny_dir, monkeypatch):
    from qiedge.runtime import runner
    from qiedge.runtime.sampler import Request

    monkeypatch.setattr(runner, "detect", lambda: cpu("skylake-xeon"))
    big = runner.open_runtime(model=tiny_dir)  # no request: sized as a long-running job
    assert (big.choice.backend, big.backend.name, big.warnings) == ("torch-compile", "torch-compile", [])
    small = runner.open_runtime(model=tiny_dir, request=Request(["a red circle"], width=64, height=64))
    assert small.choice.backend == "torch" and "GFLOP job" in small.choice.reason
    forced = runner.open_runtime(model=tiny_dir, backend="torch-bf16")
    assert forced.choice.reason == "as asked" and "2.4x slower" in forced.warnings[0]
    monkeypatch.setattr(runner, "detect", lambda: cpu("sapphire-rapids"))
    assert runner.open_runtime(model=tiny_dir, backend="torch-bf16").warnings == []


def test_job_size_counts_parameters_tokens_steps_and_images(tiny_dir):
    from qiedge.core.artifacts import ModelFacts
    from qiedge.reference_model.model_dir import ModelDir
    from qiedge.reference_model.weights import parameter_count
    from qiedge.runtime.runner import _job_flop
    from qiedge.runtime.sampler import Request

    model = ModelDir.open(tiny_dir)
    params = sum(p.numel() for p in model.load_transformer().parameters())
    assert parameter_count(tiny_dir / "transformer") == params
    request = Request(["a", "b"], width=64, height=128, cfg=2.0, negative_prompt=" ")
    # 4 x 8 tokens, the tiny model's 4-step grid, 2 prompts, doubled by guidance.
    assert _job_flop(model, ModelFacts.from_model_dir(model), request) == 2.0 * params * 32 * 4 * 4


def test_inspect_hardware_reports_this_machine():
    result = subprocess.run(
        [sys.executable, "-m", "qiedge.cli", "inspect", "--hardware", "--json"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["cpu"] == hardware.detect().to_json()
    assert report["torch"]["avx512_bf16"] == ("avx512_bf16" in hardware.detect().features)
    assert report["auto"]["backend"] == auto.choose(hardware.detect(), float("inf"), auto.visible_gpu()).backend


def test_shipped_int8_probe_is_the_built_one():
    assert ort_int8.PROBE.read_bytes() == ort_int8.build_probe().SerializeToString()


def test_int8_probe_agrees_with_onnxruntimes_documented_rule():
    """ONNX Runtime documents that its u8s8 kernels saturate on x86 without VNNI, nowhere else;
    the probe must find exactly that on this CPU, and the remedy must be exact here too."""
    features = hardware.detect().features
    documented = hardware.detect().arch == "x86_64" and not features & {"avx512_vnni", "avx_vnni", "amx_int8"}
    assert ort_int8.saturates() == documented
    assert ort_int8.probe_is_exact(ort_int8.EXACT_KERNELS)
    assert ort_int8.session_config("int8") == (ort_int8.EXACT_KERNELS if documented else {})
    assert ort_int8.session_config("fp8") == {}


def test_int8_artifacts_say_which_kernels_keep_them_exact():
    from types import SimpleNamespace

    from qiedge.runtime.runner import _choose

    int8 = SimpleNamespace(
        manifest={"target": "onnx"},
        components={"transformer_step": {"precision": "int8"}, "vae_decoder": {"precision": "fp32"}},
    )
    for asked in ("auto", "onnxruntime"):
        choice = _choose(asked, None, int8, None, None)
        assert choice.backend == "onnxruntime" and choice.reason.endswith(f"; int8 {ort_int8.describe()}")
    fp32 = SimpleNamespace(manifest={"target": "onnx"}, components={"vae_decoder": {"precision": "fp32"}})
    assert _choose("auto", None, fp32, None, None).reason == "onnx artifacts"
