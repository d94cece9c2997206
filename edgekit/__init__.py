"""edgekit: prune, distill, quantize and benchmark image classifiers for Jetson and TensorRT."""

__version__ = "0.1.0"
