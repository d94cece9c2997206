"""Latency model of a backend for latency-targeted pruning (Python 3.8, torch-free).

`layers` (ResNet-50's channel groups, layer kinds, ONNX graphs via onnx.helper), `backends` (registry:
onnxruntime-cpu, tensorrt; torch-cuda from edgekit.host.latency_torch), `table` (per-layer lookup tables,
cache, calibration), `allocate` (HALP's latency-saliency knapsack), `command` (`edgekit latency-table`).
"""
