"""The GPUs the tensorrt target builds for, and what each can run. Data only: the CLI lists
them without importing the exporter."""

from __future__ import annotations

from dataclasses import dataclass

PRECISIONS = ("fp16", "bf16", "int8", "fp8", "int4")
QUANTIZED = ("int8", "fp8", "int4")  # Q/DQ from a quantization recipe over an fp16 graph


@dataclass(frozen=True)
class Device:
    name: str
    compute_capability: str
    precisions: tuple[str, ...]
    tensorrt: str  # the TensorRT operator table its graphs are checked against by default
    workspace_mb: int  # builder scratch memory: small on a Jetson, whose GPU shares the system's RAM


# FP8 tensor cores arrived with Ada and Hopper: an FP8 network fails to build on Orin (Ampere).
# JetPack 6 ships TensorRT 10.3, whose operator table is not stored here: Orin is checked
# against the oldest one that is (10.6).
DEVICES = {
    "orin": Device("Jetson Orin (Ampere)", "8.7", ("fp16", "bf16", "int8", "int4"), "10.6", 2048),
    "thor": Device("Jetson Thor (Blackwell)", "11.0", PRECISIONS, "10.15", 4096),
    "ada": Device("Ada (RTX 40, L4, L40S)", "8.9", PRECISIONS, "10.15", 8192),
    "hopper": Device("Hopper (H100, H200)", "9.0", PRECISIONS, "10.15", 8192),
    "blackwell": Device("Blackwell (B200, RTX 50)", "10.0", PRECISIONS, "10.15", 8192),
}
