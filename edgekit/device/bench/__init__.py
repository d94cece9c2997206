"""Benchmark harness (device side: Python 3.8, no torch): scenarios, power sampling, results."""
