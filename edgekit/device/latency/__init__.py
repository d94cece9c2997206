"""Latency model of a backend for latency-targeted pruning (Python 3.8, torch-free).

`net` (a network's layer description: channel groups, layer kinds, ONNX graphs via onnx.helper),
`layers` (ResNet-50's built-in description), `backends` (registry: onnxruntime-cpu, tensorrt; torch-cuda
from an entry point), `table` (per-layer lookup tables, cache, calibration), `allocate` (HALP's
latency-saliency knapsack), `command` (`edgekit latency-table`).
"""
