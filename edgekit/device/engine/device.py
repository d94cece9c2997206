"""The CUDA device this process runs on: name, compute capability, DLA cores (pycuda, lazily)."""

from typing import Dict

from ...lazy import lazy_import


def cuda_device(index: int = 0) -> Dict[str, object]:
    cuda = lazy_import("pycuda.driver")
    cuda.init()
    device = cuda.Device(index)
    major, minor = device.compute_capability()
    return {"name": device.name(), "compute_capability": "{}.{}".format(major, minor)}


def dla_cores() -> int:
    """DLA cores TensorRT sees here (0 on GPUs without DLA)."""
    trt = lazy_import("tensorrt")
    builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    return int(getattr(builder, "num_DLA_cores", 0))
