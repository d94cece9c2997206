"""The `torch-cuda` latency backend: FP16, channels_last, CUDA-graph replay on a GPU host (the setup the
GPU measurements in FACTS.md used, so its tables are comparable with them).

Declared by `TORCH_CUDA` below and found through the entry-point group `edgekit.latency_backends`
(pyproject.toml): the torch-free registry never names this module. Layers are built as torch modules
from the same layer kinds the ONNX backends time, and whole networks from the same layer description.
"""

from typing import Any, Callable, Dict, List

import torch
from torch import nn

from ..device.latency.backends import Backend
from ..device.runtime.registry import Timer
from ..errors import EdgekitError
from .arch.resnet import from_stage_spec

_ACTS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish, "hardsigmoid": nn.Hardsigmoid,
         "silu": nn.SiLU, "sigmoid": nn.Sigmoid}


def _act(name: Any) -> nn.Module:
    return _ACTS[name]() if name else nn.Identity()


def _layer_module(kind: Any, cin: int, cout: int) -> nn.Module:
    if kind.op == "stem":
        return nn.Sequential(nn.Conv2d(3, cout, 7, 2, 3, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                             nn.MaxPool2d(3, 2, 1))
    if kind.op == "linear":
        return nn.Sequential(nn.Linear(cin, cout), _act(kind.act))
    if kind.op == "se":
        return _SqueezeExcite(cin, cout, kind.act, kind.gate)
    conv = nn.Conv2d(cin, cout, kind.kernel, kind.stride, kind.pad, kind.dilation, cin if kind.depthwise else 1,
                     bias=False)
    body = nn.Sequential(conv, nn.BatchNorm2d(cout), _act(kind.act))
    return _AddAct(body, _act(kind.post_act)) if kind.residual else body


class _AddAct(nn.Module):
    def __init__(self, body: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.body, self.act = body, act

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + residual)


class _SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeezed: int, act: Any, gate: Any) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, squeezed, 1), _act(act),
                                  nn.Conv2d(squeezed, channels, 1), _act(gate))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.body(x)


class _OpsNet(nn.Module):
    """A whole network from a layer description's `ops` at given widths (random weights)."""

    def __init__(self, net: Any, groups: Dict[str, int]) -> None:
        super().__init__()
        self.ops, layers, channels = net.ops, nn.ModuleList(), []
        for op in net.ops:
            c = channels[op["in"]] if isinstance(op.get("in"), int) else 3
            if op["op"] == "conv":
                cout = c if op["depthwise"] else net.width(groups, op["group"])
                layers.append(nn.Conv2d(c, cout, op["kernel"], op["stride"], op["pad"], op.get("dilation", 1),
                                        c if op["depthwise"] else 1))
                c = cout
            elif op["op"] == "linear":
                layers.append(nn.Linear(c, net.width(groups, op["group"])))
                c = net.width(groups, op["group"])
            elif op["op"] == "act":
                layers.append(_act(op["act"]))
            elif op["op"] == "gap":
                layers.append(nn.AdaptiveAvgPool2d(1))
            elif op["op"] == "maxpool":
                layers.append(nn.MaxPool2d(op["kernel"], op["stride"], op["pad"]))
            else:  # input, add, mul, flatten: no module
                layers.append(nn.Identity())
            channels.append(channels[op["in"][0]] if isinstance(op.get("in"), list) else c)
        self.layers = layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs: List[torch.Tensor] = []
        for op, layer in zip(self.ops, self.layers):
            if op["op"] == "input":
                outs.append(x)
            elif op["op"] in ("add", "mul"):
                a, b = op["in"]
                outs.append(outs[a] + outs[b] if op["op"] == "add" else outs[a] * outs[b])
            elif op["op"] == "flatten":
                outs.append(torch.flatten(outs[op["in"]], 1))
            else:
                outs.append(layer(outs[op["in"]]))
        return outs[-1]


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
        side = [] if kind.op == "linear" else [kind.in_hw, kind.in_hw]
        shape = [batch, 3 if kind.op == "stem" else cin] + side
        inputs = {"input": torch.randn(*shape)}
        if kind.residual:
            inputs["residual"] = torch.randn(batch, cout, kind.out_hw, kind.out_hw)
        return self._graph_timer(module, inputs)()

    def network_timer(self, net: Any, groups: Dict[str, int], batch: int) -> Callable[[], float]:
        from ..device.latency.layers import spec_of

        if net.ops is None:  # ResNet-50's built-in description: torchvision's own model
            model = from_stage_spec(spec_of(dict(net.dense_groups(), **groups)), 1000)
        else:
            model = _OpsNet(net, groups)
        return self.module_timer(model, net.image_size, batch)

    def module_timer(self, model: nn.Module, image_size: int, batch: int) -> Callable[[], float]:
        import copy

        return self._graph_timer(copy.deepcopy(model), {"input": torch.randn(batch, 3, image_size, image_size)})

    def time_model(self, model: Any, feeds: Dict[str, Any]) -> float:
        raise EdgekitError("latency backend torch-cuda times torch modules, not ONNX files")


TORCH_CUDA = Timer("torch-cuda", ("fp16", "fp32"), TorchCudaBackend, "PyTorch FP16 with CUDA graphs on a GPU host")
