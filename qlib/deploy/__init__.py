"""Deployment: bit-packed safetensors checkpoints and their sizes, real int8 inference on oneDNN's x86 kernels, and the
ONNX QDQ export. It imports the layers below it, never ``qlib.second_order``.
"""
