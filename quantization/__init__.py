"""INT8 / FP8 / INT4 quantization of the transformer (and, weight-only, of the condition
encoder's weights) and its accuracy report."""
