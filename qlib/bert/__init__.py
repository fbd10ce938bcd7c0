"""BERT made quantized: the per-layer quantization config, the quantized Linear / Embedding modules (uniform, integer-
only, product-quantized) and the conversion and calibration of a transformers BERT. It imports ``qlib.core`` and
``qlib.common``.
"""
