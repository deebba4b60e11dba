"""INT8 / FP8 quantization of the transformer and its accuracy report."""
