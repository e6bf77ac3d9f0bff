"""Quantized weights: GGUF block formats kept as they are, and the layers that run them."""
