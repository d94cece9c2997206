"""PyTorch behind the runner interface (host only): eager mode, and torch-tensorrt on x86 GPU hosts.

torch-tensorrt compiles the student directly (no ONNX, no engine file); it is optional and
imported only when that runner activates, with an error that says what to install.

Both runners are declared here as registry entries and found through the entry-point group
`edgekit.runners` (pyproject.toml), so the torch-free registry never names this module.
"""

import copy
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import nn

from ..device.runtime import registry
from ..device.runtime.base import Runner, TensorSpec
from ..errors import EdgekitError
from ..lazy import lazy_import
from .export import INPUT_NAME


class TorchEagerRunner(Runner):
    """A PyTorch module behind the runner interface (host only), for eager-mode baselines."""

    name = "pytorch-eager"

    def __init__(self, model: nn.Module, image_size: int, threads: Optional[int] = None) -> None:
        super(TorchEagerRunner, self).__init__()
        self.model = model
        self.image_size = image_size
        self.threads = threads

    def activate_impl(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        self.model.eval()

    def deactivate_impl(self) -> None:
        pass

    def input_specs_impl(self) -> List[TensorSpec]:
        return [TensorSpec(INPUT_NAME, np.float32, ["batch", 3, self.image_size, self.image_size])]

    def output_names_impl(self) -> List[str]:
        return ["logits"]

    def infer_impl(self, feed: Dict[str, np.ndarray]):  # noqa: ANN201
        with torch.inference_mode():
            out = self.model(torch.from_numpy(feed[INPUT_NAME]))
        return {"logits": out.numpy()}, None

    def runtime_info(self) -> Dict[str, str]:
        return {"runner": self.name, "runtime": "pytorch", "runtime_version": torch.__version__,
                "threads": str(torch.get_num_threads())}


class TorchTensorRTRunner(TorchEagerRunner):
    """The student compiled by torch-tensorrt (FP16 or FP32) on a CUDA GPU; compute time from CUDA events."""

    name = "torch-tensorrt"
    device = "cuda"

    def __init__(self, model: nn.Module, image_size: int, precision: str = "fp16", max_batch: int = 8) -> None:
        super(TorchTensorRTRunner, self).__init__(model, image_size)
        if precision not in ("fp16", "fp32"):
            raise EdgekitError("torch-tensorrt runner precision must be fp16 or fp32, got {}".format(precision))
        self.precision = precision
        self.max_batch = max_batch

    def activate_impl(self) -> None:
        torch_tensorrt = lazy_import("torch_tensorrt")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise EdgekitError("torch-tensorrt needs a CUDA GPU; none is visible here")
        dtype = torch.half if self.precision == "fp16" else torch.float
        # A copy: .to() converts a module in place, and the caller's FP32 model must stay as it was.
        model = copy.deepcopy(self.model).eval().to(self.device, dtype)
        shape = [3, self.image_size, self.image_size]
        self.dtype = dtype
        self.compiled = torch_tensorrt.compile(
            model, inputs=[torch_tensorrt.Input(min_shape=[1] + shape, opt_shape=[1] + shape,
                                                max_shape=[self.max_batch] + shape, dtype=dtype)],
            enabled_precisions={dtype})
        self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def infer_impl(self, feed: Dict[str, np.ndarray]):  # noqa: ANN201
        x = torch.from_numpy(feed[INPUT_NAME]).to(self.device, self.dtype)
        with torch.inference_mode():
            self.start.record()
            out = self.compiled(x)
            self.end.record()
        torch.cuda.synchronize()
        return {"logits": out.float().cpu().numpy()}, self.start.elapsed_time(self.end) / 1000.0

    def runtime_info(self) -> Dict[str, str]:
        return {"runner": self.name, "runtime": "torch-tensorrt", "precision": self.precision,
                "torch": torch.__version__}


def _checkpoint_model(path: str) -> nn.Module:
    from .models import load_resnet50_checkpoint

    return load_resnet50_checkpoint(path, log=lambda message: None)[0]


def _eager(path: str, **options: object) -> Runner:
    return TorchEagerRunner(_checkpoint_model(path), int(options.get("image_size") or 224),  # type: ignore[arg-type]
                            threads=options.get("threads"))  # type: ignore[arg-type]


def _torch_tensorrt(path: str, **options: object) -> Runner:
    return TorchTensorRTRunner(_checkpoint_model(path), int(options.get("image_size") or 224))  # type: ignore[arg-type]


def _torch_tensorrt_version() -> Optional[str]:
    try:
        return lazy_import("torch_tensorrt").__version__
    except EdgekitError:
        return None


TORCH = registry.Need(("torch",), "{python} -m pip install 'edgekit[host]': the host stages need PyTorch")

PYTORCH = registry.RunnerEntry(
    "pytorch", _eager, placements={"cpu": ("fp32",)}, suffixes=(".pt", ".pth"), needs=(TORCH,),
    version=lambda: torch.__version__, description="a ResNet-50 checkpoint in PyTorch eager mode (host)")
TORCH_TENSORRT = registry.RunnerEntry(
    "torch-tensorrt", _torch_tensorrt, placements={"gpu": ("fp32", "fp16")}, suffixes=(".pt", ".pth"),
    needs=(TORCH, registry.Need(("torch_tensorrt",), "pip install torch-tensorrt matching your torch "
                                "(x86 hosts with a CUDA GPU)")),
    version=_torch_tensorrt_version,
    description="a ResNet-50 checkpoint compiled by torch-tensorrt (x86 CUDA hosts)")
