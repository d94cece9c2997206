#!/usr/bin/env python3
"""The comparison suite, measured afresh: dense ResNet-50 FP32 in PyTorch eager, dense FP32 and INT8 in
onnxruntime, and our compressed INT8 model in onnxruntime, side by side in one run at 224x224
(batch 1 and a batch sweep). Earlier stages are reused from artifacts/<recipe>/ (computed if missing);
the table goes to stdout and into artifacts/<recipe>/summary.json as `compare`.

    .venv/bin/python benchmarks/compare.py [--recipe digits] [--set compare.batches=[1,8,16]]
"""

import sys

from edgekit.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(main(["run", "--force-stage", "compare"] + args))
