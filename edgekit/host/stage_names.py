"""The host stages by name, in the order they run.

Torch-free, so `edgekit run --help` and `--force-stage` can list them without importing PyTorch;
`pipeline.py` checks at import that its STAGES carry exactly these names.
"""

STAGE_NAMES = ("teacher", "compress", "evaluate", "export", "quantize", "fallback", "qat", "int8", "measure",
               "variants", "evalset", "compare")
