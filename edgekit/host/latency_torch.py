"""The `torch-cuda` latency backend: FP16, channels_last, CUDA-graph replay on a GPU host (the setup the
GPU measurements in FACTS.md used, so its tables are comparable with them).

Declared by `TORCH_CUDA` below and found through the entry-point group `edgekit.latency_backends`
(pyproject.toml): the torch-free registry never names this module. Layers are built as torch modules
from the same layer kinds the ONNX backends time.
"""

from typing import Any, Callable, Dict

import torch
from torch import nn

from ..device.latency.backends import Backend
from ..device.runtime.registry import Timer
from ..errors import EdgekitError
from .arch.resnet import from_stage_spec


def _layer_module(kind: Any, cin: int, cout: int) -> nn.Module:
    pad = kind.kernel // 2
    if kind.op == "stem":
        return nn.Sequential(nn.Conv2d(3, cout, 7, 2, 3, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                             nn.MaxPool2d(3, 2, 1))
    conv = nn.Conv2d(cin, cout, kind.kernel, kind.stride, pad, bias=False)
    if kind.op == "conv":
        return nn.Sequential(conv, nn.BatchNorm2d(cout))
    if kind.op == "conv_add_relu":
        return _AddRelu(nn.Sequential(conv, nn.BatchNorm2d(cout)))
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _AddRelu(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + residual)


class TorchCudaBackend(Backend):
    name = "torch-cuda"

    def __init__(self, precision: str = "fp16", **kwargs: Any) -> None:
        if not torch.cuda.is_available():
            raise EdgekitError("latency backend torch-cuda needs a CUDA GPU (torch.cuda.is_available() is False); "
                               "use onnxruntime-cpu here")
        super().__init__(precision=precision, **kwargs)
        self.dtype = torch.float16 if precision == "fp16" else torch.float32

    def device(self) -> str:
        return torch.cuda.get_device_name(0)

    def runtime_version(self) -> str:
        return "torch {} cuda {} cudnn {}".format(torch.__version__, torch.version.cuda,
                                                  torch.backends.cudnn.version())

    def _graph_timer(self, module: nn.Module, inputs: Dict[str, torch.Tensor]) -> Callable[[], float]:
        module = module.eval().to("cuda", self.dtype).to(memory_format=torch.channels_last)
        args = [t.to("cuda", self.dtype).contiguous(memory_format=torch.channels_last) for t in inputs.values()]
        stream = torch.cuda.Stream()
        with torch.no_grad(), torch.cuda.stream(stream):
            for _ in range(3):  # warm-up on a side stream, as CUDA graph capture requires
                module(*args)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            module(*args)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def window() -> float:
            times = []
            for _ in range(self.warmup):
                graph.replay()
            for _ in range(max(self.min_runs, 20)):
                start.record()
                graph.replay()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            times.sort()
            return float(times[len(times) // 10])
        return window

    def time_layer(self, kind: Any, cin: int, cout: int, batch: int) -> float:
        module = _layer_module(kind, cin, cout)
        inputs = {"input": torch.randn(batch, cin if kind.op != "stem" else 3, kind.in_hw, kind.in_hw)}
        if kind.op == "conv_add_relu":
            inputs["residual"] = torch.randn(batch, cout, kind.out_hw, kind.out_hw)
        return self._graph_timer(module, inputs)()

    def time_network(self, groups: Dict[str, int], image_size: int, batch: int) -> float:
        from ..device.latency.layers import spec_of

        model = from_stage_spec(spec_of(groups), 1000)
        return self.module_timer(model, image_size, batch)()

    def module_timer(self, model: nn.Module, image_size: int, batch: int) -> Callable[[], float]:
        import copy

        return self._graph_timer(copy.deepcopy(model), {"input": torch.randn(batch, 3, image_size, image_size)})

    def time_model(self, model: Any, feeds: Dict[str, Any]) -> float:
        raise EdgekitError("latency backend torch-cuda times torch modules, not ONNX files")


TORCH_CUDA = Timer("torch-cuda", ("fp16", "fp32"), TorchCudaBackend, "PyTorch FP16 with CUDA graphs on a GPU host")
