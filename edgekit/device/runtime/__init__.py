"""Runners: one interface over TensorRT and onnxruntime (device side: Python 3.8, no torch).

    with OnnxRuntimeRunner("model.int8.cpu.onnx") as runner:
        outputs = runner.infer({"input": batch})          # {name: ndarray} in, {name: ndarray} out
        runner.last_inference_time()                       # end-to-end seconds of that call
"""

from .base import Runner, TensorSpec
from .onnxrt import OnnxRuntimeRunner
from .registry import create, register
from .registry import names as runner_names

__all__ = ["Runner", "TensorSpec", "OnnxRuntimeRunner", "create", "register", "runner_names"]
