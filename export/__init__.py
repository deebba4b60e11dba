"""Per-component export of the reference model to ONNX, Core ML and TensorRT."""
