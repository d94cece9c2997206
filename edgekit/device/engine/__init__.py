"""TensorRT engines (device side: Python 3.8, no torch; `tensorrt` imported lazily).

    build_engine(BuildConfig(onnx_path="model.int8.qdq.onnx", precision="int8"))  # -> engine + .json + .log
"""

from .builder import BuildConfig, build_engine, trtexec_command
from .metadata import EngineMetadata, check_compatible

__all__ = ["BuildConfig", "build_engine", "trtexec_command", "EngineMetadata", "check_compatible"]
