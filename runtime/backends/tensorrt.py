"""The tensorrt backend: the engines of a tensorrt artifacts directory on the GPU they were built for.

- Each engine is refused before it loads if the manifest says it was built by another TensorRT
  version or for another GPU (an engine is tied to both), naming what to rebuild with;
- one execution context per engine; every call sets the input shapes, checked against the
  profile the engine was built with, and binds torch CUDA tensors as the device buffers; a batch
  larger than the profile's (`--max-batch`) runs in parts of that many items (runtime/bucketed.py);
- arrays stay on the device (the cuda backend's DeviceArrays), so the prefix's K/V and the
  latents never cross to the host between the prompt going in and the image coming out; only
  what the sampler computes with (velocity, image) comes back fp32;
- a static-shape engine (min = opt = max) replays a CUDA graph captured on its first call, and
  takes shorter prompts and smaller batches padded into its one shape (runtime/bucketed.py, as
  Core ML's buckets: exact, padded keys are masked).

Engines built by `build_engines.sh` instead of `--build` carry no manifest record: TensorRT's own
check at deserialization is what refuses a mismatched one there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qiedge.core.artifacts import Artifacts

from ..bucketed import BucketedSession, PartedSession, read_dims
from . import Session
from .cuda import DeviceArrays

KEEP_DTYPE = ("past_keys", "past_values")  # read by the next engine, not by the sampler


def _tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise ValueError(
            "the tensorrt backend needs TensorRT's Python package (import tensorrt) and an NVIDIA GPU; "
            "without them these graphs run on --backend onnxruntime"
        ) from None
    return trt


class TensorRTSession:
    def __init__(self, component: str, engine, profile: dict, static: bool):
        import torch

        trt = _tensorrt()
        self.component, self.engine, self.profile, self.static = component, engine, profile, static
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: _torch_dtype(trt, torch, engine.get_tensor_dtype(n)) for n in names}
        self.stream = torch.cuda.Stream()
        self.graph, self.bound, self.placeholders = None, {}, []

    def run(self, feeds: dict) -> dict:
        import torch

        inputs = {n: self._device(n, feeds[n]) for n in self.inputs}
        self.stream.wait_stream(torch.cuda.current_stream())  # the inputs were written on that one
        with torch.cuda.stream(self.stream):
            outputs = self._replay(inputs) if self.static else self._execute(inputs)
        self.stream.synchronize()
        return {n: o if n in KEEP_DTYPE or not o.is_floating_point() else o.float() for n, o in outputs.items()}

    def _device(self, name: str, value):
        import torch

        tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
        tensor = tensor.to("cuda", self.dtypes[name]).contiguous()
        low, high = self.profile[name]["min"], self.profile[name]["max"]
        if len(tensor.shape) != len(low) or any(not a <= s <= b for a, s, b in zip(low, tensor.shape, high)):
            raise ValueError(
                f"{self.component}: {name} has shape {tuple(tensor.shape)}, outside the engine's profile "
                f"{tuple(low)} .. {tuple(high)}: export again with wider --sizes / --prompt-lengths"
            )
        return tensor

    def _bind(self, inputs: dict) -> dict:
        import torch

        self.placeholders = []  # kept alive while TensorRT may read them (a CUDA graph: always)
        for name, tensor in inputs.items():
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise ValueError(f"{self.component}: TensorRT refused {name} of shape {tuple(tensor.shape)}")
            # An empty tensor (the prefix's cond_latents without condition images) has no storage,
            # and TensorRT needs a non-null address for every input.
            storage = tensor if tensor.numel() else self._placeholder(tensor)
            self.context.set_tensor_address(name, storage.data_ptr())
        outputs = {
            n: torch.empty(tuple(self.context.get_tensor_shape(n)), dtype=self.dtypes[n], device="cuda")
            for n in self.outputs
        }
        for name, tensor in outputs.items():
            self.context.set_tensor_address(name, tensor.data_ptr())
        return outputs

    def _placeholder(self, tensor):
        import torch

        self.placeholders.append(torch.empty(1, dtype=tensor.dtype, device=tensor.device))
        return self.placeholders[-1]

    def _execute(self, inputs: dict) -> dict:
        outputs = self._bind(inputs)
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"{self.component}: TensorRT failed to run the engine")
        return outputs

    def _replay(self, inputs: dict) -> dict:
        """Static shapes: copy into the buffers a captured CUDA graph reads, replay, copy out."""
        import torch

        if self.graph is None:
            self.bound = {"in": {n: t.clone() for n, t in inputs.items()}}
            self.bound["out"] = self._execute(self.bound["in"])  # TensorRT's first run must not be captured
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, stream=self.stream):
                self.context.execute_async_v3(self.stream.cuda_stream)
        for name, tensor in inputs.items():
            self.bound["in"][name].copy_(tensor)
        self.graph.replay()
        return {n: t.clone() for n, t in self.bound["out"].items()}


def _torch_dtype(trt, torch, dtype):
    table = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.bfloat16: torch.bfloat16,
        trt.int64: torch.int64,
        trt.int32: torch.int32,
        trt.bool: torch.bool,
    }
    return table[dtype]


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, artifacts: Artifacts):
        import torch

        trt = _tensorrt()
        if not torch.cuda.is_available():
            raise ValueError("the tensorrt backend needs an NVIDIA GPU; none is visible here")
        self.artifacts = artifacts
        self.arrays = DeviceArrays(torch.device("cuda"))
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.version = trt.__version__

    def load(self, component: str) -> Session:
        entry = self.artifacts.component(component)
        path = self._engine_path(component, entry)
        engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise ValueError(
                f"{path}: TensorRT {self.version} cannot load this engine (built by another TensorRT "
                f"version or for another GPU): rebuild it here with {self.artifacts.path}/build_engines.sh"
            )
        if self.artifacts.manifest["tensorrt"]["settings"]["weight_streaming"]:
            # Streaming is off unless a budget is set before the context exists: let TensorRT size it.
            engine.weight_streaming_budget_v2 = engine.weight_streaming_automatic_budget
        session = TensorRTSession(component, engine, entry["profile"], entry["static"])
        exported = self.artifacts.manifest["tensorrt"]
        if not entry["static"]:
            return PartedSession(component, entry, session, exported["max_batch"], self.arrays)
        label = f"{exported['sizes'][0]}_t{exported['prompt_lengths'][0]}"
        return static_session(component, entry, session, self.arrays, label)

    def _engine_path(self, component: str, entry: dict) -> Path:
        record = entry.get("engine")
        if record is None:
            path = self.artifacts.inside(str(Path(entry["graph"]).with_suffix(".plan")))
            if not path.is_file():
                raise ValueError(
                    f"{component}: no engine at {path}: run {self.artifacts.path}/build_engines.sh on this GPU "
                    "(or export with --build here)"
                )
            return path
        from qiedge.export.tensorrt_build import gpu

        here = {"tensorrt": self.version, **gpu()}
        for key in ("tensorrt", "gpu", "compute_capability"):
            if record[key] != here[key]:
                raise ValueError(
                    f"{component}: the engine was built by TensorRT {record['tensorrt']} for {record['gpu']} "
                    f"({record['compute_capability']}); this is TensorRT {here['tensorrt']} on {here['gpu']} "
                    f"({here['compute_capability']}): rebuild with {self.artifacts.path}/build_engines.sh"
                )
        self.artifacts.verify(component)
        return self.artifacts.graph(component, record["file"])  # the engine is among the hashed files

    def prompt_encoder(self, facts):
        """The exported language model behind the tokenizer, and the vision tower's engine for editing."""
        from qiedge.core.tokenizer import PromptTokenizer

        from ..sampler import GraphPromptEncoder

        encoder = OnHost(self.load("condition_encoder"), self.arrays)
        vision = lambda: OnHost(self.load("vision_encoder"), self.arrays)  # noqa: E731
        return GraphPromptEncoder(PromptTokenizer(facts.tokenizer_json), encoder, facts.vision, vision)


def static_session(component: str, entry: dict, session: Session, arrays, label: str) -> BucketedSession:
    """`session` over a static engine as one fixed-shape function, the dims its profile fixes
    (`label`: the size and prompt length it was exported for, as errors name it)."""
    inputs = {t["name"]: t for t in entry["inputs"]}
    dims = read_dims(component, inputs, {name: tuple(entry["profile"][name]["min"]) for name in inputs})
    functions = {f"engine_{label}": dims}
    return BucketedSession(component, {**entry, "functions": functions}, lambda _, f: session.run(f), arrays)


class OnHost:
    """A session whose outputs come to the host: the prompt's hidden states are cut per prompt there."""

    def __init__(self, session: Session, arrays: DeviceArrays):
        self.session, self.arrays = session, arrays

    def run(self, feeds: dict) -> dict[str, np.ndarray]:
        return {n: self.arrays.get(v) for n, v in self.session.run(feeds).items()}


def open(name: str, model, artifacts: Artifacts, threads: int | None) -> TensorRTBackend:
    return TensorRTBackend(artifacts)
