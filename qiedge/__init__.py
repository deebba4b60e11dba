"""qiedge: Qwen-Image-2 from its PyTorch definition to ONNX, Core ML and TensorRT."""

__version__ = "0.1.0"
