"""gdws-export: GDWS approximation of robust CNNs, lowered to ONNX Runtime and TensorRT."""

__version__ = "0.1.0"
