"""The CUDA device this process runs on: name, compute capability, DLA cores (pycuda, lazily)."""

from typing import Dict, Optional

from ...lazy import lazy_import
from .api import trt


def cuda_device(index: int = 0) -> Dict[str, object]:
    cuda = lazy_import("pycuda.driver")
    cuda.init()
    device = cuda.Device(index)
    major, minor = device.compute_capability()
    return {"name": device.name(), "compute_capability": "{}.{}".format(major, minor)}


def dla_cores(runtime: "Optional[trt.Runtime]" = None) -> int:
    """DLA cores TensorRT sees here (0 on GPUs without DLA), from a `trt.Runtime` (the caller's when
    given): a Builder is heavy, and creating one per runner activation is what the runner must not do."""
    if runtime is None:
        runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    return int(runtime.num_DLA_cores)
