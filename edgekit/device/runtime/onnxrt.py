"""onnxruntime runner: the CPU fallback CI and laptops use, and CUDA/TensorRT providers when present."""

import os
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from ...errors import EdgekitError
from ...lazy import lazy_import
from .base import Runner, TensorSpec

ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int32)": np.int32,
    "tensor(int64)": np.int64, "tensor(bool)": np.bool_,
}

# Fastest first; only those this onnxruntime build offers are used.
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


class OnnxRuntimeRunner(Runner):
    """Runs an ONNX file with onnxruntime. `threads` sets intra-op threads (None: onnxruntime's default)."""

    name = "onnxruntime"
    split_not_applicable = {"enqueue": "onnxruntime runs synchronously: no separate enqueue",
                            "h2d": "onnxruntime takes host arrays: its copies are inside compute",
                            "d2h": "onnxruntime returns host arrays: its copies are inside compute"}

    def __init__(self, model_path: str, providers: Optional[Sequence[str]] = None,
                 threads: Optional[int] = None) -> None:
        super(OnnxRuntimeRunner, self).__init__()
        self.model_path = model_path
        self.requested_providers = list(providers) if providers else None
        self.threads = threads
        self.session = None
        self._inputs: List[TensorSpec] = []
        self._outputs: List[str] = []

    def activate_impl(self) -> None:
        ort = lazy_import("onnxruntime")
        path = self.model_path
        if not os.path.isfile(path):
            raise EdgekitError("ONNX model not found: {}".format(path))
        available = ort.get_available_providers()
        if self.requested_providers:
            unknown = [p for p in self.requested_providers if p not in available]
            if unknown:
                raise EdgekitError("onnxruntime {} has no {}; available: {}".format(
                    ort.__version__, ", ".join(unknown), ", ".join(available)))
            providers = self.requested_providers
        else:
            providers = [p for p in PREFERRED_PROVIDERS if p in available]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            options.intra_op_num_threads = int(self.threads)
            options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: the warnings are for onnxruntime's developers
        try:
            self.session = ort.InferenceSession(path, options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own pybind exception types
            raise EdgekitError("{} is not a valid ONNX model for onnxruntime ({}); re-export it".format(
                path, _first_line(exc))) from None
        self._inputs = []
        for arg in self.session.get_inputs():
            if arg.type not in ORT_DTYPES:
                raise EdgekitError("input {} of {} has type {}, which edgekit does not feed".format(
                    arg.name, path, arg.type))
            self._inputs.append(TensorSpec(arg.name, ORT_DTYPES[arg.type], arg.shape))
        self._outputs = [arg.name for arg in self.session.get_outputs()]

    def deactivate_impl(self) -> None:
        self.session = None

    def input_specs_impl(self) -> List[TensorSpec]:
        return list(self._inputs)

    def output_names_impl(self) -> List[str]:
        return list(self._outputs)

    def infer_impl(self, feed: Dict[str, np.ndarray]):  # noqa: ANN201
        start = time.perf_counter()
        outputs = self.session.run(self._outputs, feed)
        # onnxruntime runs synchronously on the host: device compute is not separable from end-to-end
        # (last_compute_time stays None); the split records the host time inside session.run.
        self._split["compute"] = time.perf_counter() - start
        return dict(zip(self._outputs, outputs)), None

    def runtime_info(self) -> Dict[str, str]:
        ort = lazy_import("onnxruntime")
        info = {"runner": self.name, "runtime": "onnxruntime", "runtime_version": ort.__version__}
        if self.session is not None:
            info["providers"] = ",".join(self.session.get_providers())
        if self.threads:
            info["threads"] = str(self.threads)
        return info
