"""The quantization core: uniform grids and quantizers with their straight-through estimator, ternary weights (TWN),
observers, Quant-Noise, bit-packing, integer-only kernels (I-BERT), product quantization, and the weight-quantizer
contract every weight quantizer implements. It imports only ``qlib.common``.
"""
