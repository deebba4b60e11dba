"""The CPU at hand: the instruction-set features that decide which path is fast and which int8
kernels are exact, read from the OS without torch (Linux `/proc/cpuinfo`, macOS `sysctl`).

Only what changes a decision is kept: where bf16 and int8 dot products run natively.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

# OS flag names -> ours. x86 names are Linux's; ARM's `asimddp` is the dot-product extension.
LINUX_FLAGS = {
    "amx_bf16": "amx_bf16",
    "amx_int8": "amx_int8",
    "avx512_bf16": "avx512_bf16",
    "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
    "avx512f": "avx512f",
    "avx2": "avx2",
    "fma": "fma",
    "bf16": "bf16",
    "i8mm": "i8mm",
    "asimddp": "dotprod",
    "sve": "sve",
}
# macOS: Intel Macs list features in two sysctl strings; Apple silicon answers one sysctl each.
DARWIN_X86_FLAGS = {"AVX2": "avx2", "FMA": "fma", "AVX512F": "avx512f", "AVX512VNNI": "avx512_vnni"}
DARWIN_ARM_FLAGS = {"FEAT_BF16": "bf16", "FEAT_I8MM": "i8mm", "FEAT_DotProd": "dotprod"}

# Which unit multiplies bf16 / int8 natively, best first.
BF16_UNITS = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"), ("bf16", "Arm BF16"))
INT8_UNITS = (
    ("amx_int8", "AMX-INT8"),
    ("avx512_vnni", "AVX512-VNNI"),
    ("avx_vnni", "AVX-VNNI"),
    ("i8mm", "Arm I8MM"),
    ("dotprod", "Arm DotProd"),
)


@dataclass(frozen=True)
class Cpu:
    model: str
    arch: str  # x86_64, arm64, or what the OS calls it
    cores: int  # logical CPUs this process may run on
    features: frozenset[str]

    @property
    def bf16_unit(self) -> str | None:
        """What multiplies bf16 natively here; None where bf16 is emulated (converted to fp32)."""
        return next((label for flag, label in BF16_UNITS if flag in self.features), None)

    @property
    def int8_unit(self) -> str | None:
        return next((label for flag, label in INT8_UNITS if flag in self.features), None)

    @property
    def vector_isa(self) -> str:
        for flag, label in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("sve", "SVE")):
            if flag in self.features:
                return label
        return "NEON" if self.arch == "arm64" else "baseline"

    def summary(self) -> str:
        """One line for benchmark headers and reports."""
        return (
            f"{self.model}, {self.cores} cores, {self.vector_isa}; bf16 {self.bf16_unit or 'emulated'}; "
            f"int8 dot {self.int8_unit or 'not native'}"
        )

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "arch": self.arch,
            "cores": self.cores,
            "features": sorted(self.features),
            "vector_isa": self.vector_isa,
            "bf16": self.bf16_unit,
            "int8_dot": self.int8_unit,
        }


def _arch() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "aarch64": "arm64"}.get(machine, machine)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """(model name, our feature names) from Linux's /proc/cpuinfo (x86 `flags`, ARM `Features`)."""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model, frozenset(LINUX_FLAGS[f] for f in flags if f in LINUX_FLAGS)


def _sysctl(name: str) -> str:
    result = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, check=False)
    return result.stdout.strip() if result.returncode == 0 else ""


def _darwin(arch: str) -> tuple[str, frozenset[str]]:
    model = _sysctl("machdep.cpu.brand_string")
    if arch == "arm64":
        return model, frozenset(
            ours for flag, ours in DARWIN_ARM_FLAGS.items() if _sysctl(f"hw.optional.arm.{flag}") == "1"
        )
    names = (_sysctl("machdep.cpu.features") + " " + _sysctl("machdep.cpu.leaf7_features")).split()
    return model, frozenset(DARWIN_X86_FLAGS[n] for n in names if n in DARWIN_X86_FLAGS)


@functools.cache
def detect() -> Cpu:
    arch, system = _arch(), platform.system()
    model, features = "", frozenset()
    if system == "Linux" and Path("/proc/cpuinfo").is_file():
        model, features = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    elif system == "Darwin":
        model, features = _darwin(arch)
    return Cpu(model or platform.processor() or arch, arch, _cores(), features)


def torch_view() -> dict | None:
    """What PyTorch reads from CPUID itself (its kernels dispatch on it); None without torch."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    return {
        "version": torch.__version__,
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "amx": torch.cpu._is_amx_tile_supported(),
        "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
        "vnni": torch.cpu._is_vnni_supported(),
    }


def report() -> dict:
    """`qiedge inspect --hardware`: the CPU, PyTorch's and ONNX Runtime's view of it, and what
    `--backend auto` picks here for a job big enough to compile."""
    import onnxruntime

    from . import auto, ort_int8

    cpu = detect()
    gpu = auto.visible_gpu()
    choice = auto.choose(cpu, float("inf"), gpu)
    return {
        "cpu": cpu.to_json(),
        "summary": cpu.summary(),
        "gpu": gpu,
        "torch": torch_view(),
        "onnxruntime": {
            "version": onnxruntime.__version__,
            "int8_u8s8_saturates": ort_int8.saturates(),
            "int8": ort_int8.describe(),
        },
        "auto": {
            "backend": choice.backend,
            "reason": choice.reason,
            "below_flop": auto.COMPILE_PAYS_OFF_FLOP,
            "below": "torch (eager fp32)",
        },
    }
