"""QAT with distillation (QAD): the fake-quantized student fine-tuned from the teacher's logits.

The quantized model is NVIDIA Model Optimizer's (`modelopt.torch.quantization`): its QuantConv2d
and TensorQuantizer modules, their fake quantization and straight-through gradients. What is
quantized, and with which starting scales, is read from the INT8 model the fallback wrote, so QAT
starts exactly where PTQ ended:

- the student is traced (torch.fx) and its BatchNorms folded into the convolutions, as the ONNX
  export folds them, so the trained weights are the ones the Q/DQ model carries (BatchNorm frozen,
  the usual QAT choice for a short fine-tune);
- its convolutions pair with the FP32 ONNX's by module name (the exporter's node scopes), checked weight
  by weight, and its residual adds with the ONNX Adds of the same source tensors;
- each convolution whose input goes through a Q/DQ pair gets an input quantizer starting at that
  pair's amax (scale x 127), and Model Optimizer's weight quantizer per channel (or per tensor)
  recomputed from the weights at every step, as the export computes it; a kept (FP16) convolution has
  both off;
- each Add input that goes through a Q/DQ pair (the residual TensorRT wants quantized) gets a quantizer
  inserted in the traced graph: the one of that tensor where a convolution reads it (the Q/DQ model
  shares that pair), else its own.

The Trainer runs it (KD loss, checkpoint and resume, DDP). Model Optimizer 0.47 learns no INT8 scale
(`learn_amax` is deprecated; its LSQ mode is for NVFP4 weight blocks), so the activation quantizers are
`LearnedScale` (LSQ) modules starting at the PTQ amax, or with `learn_scales=False` its TensorQuantizers
holding the PTQ amax. The scales are read back from the trained quantizers: the export and calib.cache
get those.

The export is not Model Optimizer's own: its Q/DQ placement differs from the one TensorRT 8.5 and the
lint want (no Q/DQ on residual inputs, BatchNorm left unfused behind quantized weights). Instead the
trained weights are put into the FP32 ONNX graph the PTQ models came from (node by node, checked
against PyTorch), and the same writers as PTQ's (`qdq.write_tensorrt`, `write_cpu`, the calibration
cache) write every flavour from it: the placement is the PTQ flavour's by construction.
"""

import contextlib
import copy
import importlib.util
import io
import operator
import os
import tempfile
import warnings
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ....errors import EdgekitError
from .calibrate import Ranges

INSTALL = "pip install 'edgekit[qat]'"
# Model Optimizer imports requests and huggingface_hub without declaring them: the extra pins all three.
NEEDED = ("modelopt", "requests", "huggingface_hub")
ADDS = (operator.add, operator.iadd, torch.add)


def check_modelopt() -> None:
    """One line naming the extra when Model Optimizer, or a module it imports undeclared, is missing."""
    for name in NEEDED:
        try:
            found = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            found = None
        if found is None:
            raise EdgekitError("qat.enabled needs NVIDIA Model Optimizer, and {} is not installed here: {}".format(
                name, INSTALL))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Model Optimizer prints its quantizer count and warns about optional integrations it lacks."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _mtq() -> Any:
    check_modelopt()
    with _quiet():
        import modelopt.torch.quantization as mtq
    return mtq


# --------------------------------------------------------------------------- what the Q/DQ model quantizes

class ConvPoint(NamedTuple):
    node: str                 # the ONNX convolution's name
    tensor: Optional[str]     # the float tensor its input Q/DQ pair quantizes; None: kept in float
    amax: Optional[float]


class AddPoint(NamedTuple):
    sources: Tuple[str, ...]                  # the float tensor behind each input (past its Q/DQ pair)
    quantized: List[Tuple[int, str, float]]   # (input index, float tensor, amax) of each input behind Q/DQ


class QuantPoints(NamedTuple):
    convs: Dict[str, ConvPoint]               # by ONNX node name
    adds: List[AddPoint]                      # every Add of two computed tensors


def _amax_of(dq: Any, inits: Dict[str, np.ndarray]) -> float:
    return float(np.asarray(inits[dq.input[1]]).reshape(-1)[0]) * 127.0


def quant_points(qdq_model: Any) -> QuantPoints:
    """Where `qdq_model` (qdq.write_tensorrt's placement, kept layers removed) quantizes activations."""
    from onnx import numpy_helper

    graph = qdq_model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}

    def through_qdq(tensor: str) -> Optional[Tuple[str, float]]:
        dq = producer.get(tensor)
        if getattr(dq, "op_type", None) != "DequantizeLinear" or dq.input[0] in inits:
            return None
        q = producer[dq.input[0]]
        return q.input[0], _amax_of(dq, inits)

    convs = {}
    for node in graph.node:
        if node.op_type == "Conv":
            found = through_qdq(node.input[0])
            convs[node.name] = ConvPoint(node.name, *(found or (None, None)))
    adds = []
    for node in _tensor_adds(graph):
        found = [through_qdq(i) for i in node.input]
        adds.append(AddPoint(tuple(f[0] if f else i for f, i in zip(found, node.input)),
                             [(i, f[0], f[1]) for i, f in enumerate(found) if f]))
    return QuantPoints(convs, adds)


def _tensor_adds(graph: Any) -> List[Any]:
    """Adds of two computed tensors (not a bias or a constant): the residual joins."""
    constant = {t.name for t in graph.initializer}
    constant |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return [n for n in graph.node if n.op_type == "Add" and not set(n.input) & constant]


# --------------------------------------------------------------------------- the quantized student

class LearnedScale(nn.Module):
    """Symmetric int8 fake quantization of an activation whose amax is learned (LSQ, Esser et al., 2019):
    clamp(round(x / s), -128, 127) * s with s = amax / 127, rounding passed straight through, amax kept as
    its log (a positive step, and Adam moves it by a share of itself). What QuantizeLinear/
    DequantizeLinear with that scale compute. Model Optimizer 0.47 learns no INT8 scale (its LSQ mode is
    for NVFP4 weight blocks, `learn_amax` is deprecated), hence this module beside its quantizers."""

    def __init__(self, amax: float) -> None:
        super().__init__()
        self.log_amax = nn.Parameter(torch.tensor(float(np.log(max(amax, 1e-8))), dtype=torch.float32))

    @property
    def amax(self) -> torch.Tensor:
        return self.log_amax.detach().exp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.log_amax.exp() / 127.0
        y = x / scale
        q = torch.clamp(y + (torch.round(y) - y).detach(), -128.0, 127.0)
        return q * scale


def _activation_quantizer(amax: float, learn: bool) -> nn.Module:
    if learn:
        return LearnedScale(amax)
    from modelopt.torch.quantization.config import QuantizerAttributeConfig
    from modelopt.torch.quantization.nn import TensorQuantizer

    return TensorQuantizer(QuantizerAttributeConfig(num_bits=8, axis=None), amax=torch.tensor(amax))


class QatModel(NamedTuple):
    model: nn.Module                     # the fake-quantized student (a GraphModule), trained in place
    convs: List[str]                     # its convolution modules (paired with the ONNX Convs by name)
    quantizers: Dict[str, nn.Module]     # ONNX float tensor -> the quantizer of that activation
    float_model: nn.Module               # the folded student without quantizers (the export's source)


def _fold(student: nn.Module) -> nn.Module:
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(copy.deepcopy(student).eval().cpu())
    except Exception as exc:  # noqa: BLE001 - fx cannot trace every model: say which and why
        raise EdgekitError("QAT traces the student with torch.fx to fold its BatchNorms and quantize its residual "
                           "inputs, and tracing failed ({}: {})".format(type(exc).__name__, exc)) from None


def _conv_nodes(gm: nn.Module) -> List[Any]:
    return [n for n in gm.graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.Conv2d)]


def _add_nodes(gm: nn.Module) -> List[Any]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target in ADDS
            and len(n.args) == 2 and all(isinstance(a, torch.fx.Node) for a in n.args)]


def module_of(onnx_node: str) -> str:
    """The module an ONNX node of torch.onnx's TorchScript exporter comes from. Its scope holds one part
    per module, each named as its parent calls it, a Sequential's child as `<sequential>.<index>`:
    /features/features.1/conv/conv.0/conv.0.0/Conv -> features.1.conv.0.0."""
    parts = onnx_node.strip("/").split("/")[:-1]
    name = ""
    for k, part in enumerate(parts):
        if k and part.startswith(parts[k - 1] + "."):
            name += part[len(parts[k - 1]):]
        else:
            name += ("." if name else "") + part
    return name


def _paired_convs(gm: nn.Module, fp32_model: Any) -> Dict[str, Any]:
    """Each traced convolution's ONNX Conv node in `fp32_model`, by module name, checked weight by weight."""
    from onnx import numpy_helper

    onnx_convs = {module_of(n.name): n for n in fp32_model.graph.node if n.op_type == "Conv"}
    inits = {t.name: t for t in fp32_model.graph.initializer}
    convs = [n.target for n in _conv_nodes(gm)]
    paired = {}
    for name in convs:
        node = onnx_convs.get(name)
        weight = gm.get_submodule(name).weight.detach().numpy()
        onnx_weight = numpy_helper.to_array(inits[node.input[1]]) if node is not None else None
        if onnx_weight is None or weight.shape != onnx_weight.shape or not np.allclose(
                weight, onnx_weight, rtol=1e-3, atol=1e-5):
            raise EdgekitError("convolution {} of the student has no twin of the same weights in model.fp32.onnx; "
                               "re-run the export stage (--force-stage export)".format(name))
        paired[name] = node
    if len(paired) != len(onnx_convs):
        raise EdgekitError("the student traces to {} convolutions but model.fp32.onnx has {}; re-run the export "
                           "stage (--force-stage export)".format(len(paired), len(onnx_convs)))
    return paired


def _onnx_tensor(node: Any, paired: Dict[str, Any]) -> Optional[str]:
    """The FP32 ONNX tensor a traced value is: a convolution's output, or the input of one that reads it."""
    if node.op == "call_module" and node.target in paired:
        return paired[node.target].output[0]
    for user in node.users:
        if user.op == "call_module" and user.target in paired and user.args[0] is node:
            return paired[user.target].input[0]
    return None


def _residual_quantizers(model: nn.Module, paired: Dict[str, Any], points: QuantPoints,
                         paths: Dict[str, str], learn: bool) -> Dict[str, nn.Module]:
    """A quantizer on each traced Add input that the ONNX Add of the same source tensors quantizes: the
    one already on that tensor where a convolution reads it (`paths`: tensor -> module path), as the
    Q/DQ model shares the pair, else a new one."""
    by_sources = {add.sources: add for add in points.adds}
    found: Dict[str, nn.Module] = {}
    adds = _add_nodes(model)
    for k, add in enumerate(adds):
        sources = tuple(_onnx_tensor(arg, paired) for arg in add.args)
        point = by_sources.get(sources)  # type: ignore[arg-type]
        if point is None:
            raise EdgekitError("the student's residual add {} has no twin in model.fp32.onnx (inputs {}); re-run the "
                               "export stage (--force-stage export)".format(add.name, sources))
        for index, tensor, amax in point.quantized:
            if tensor not in paths:
                paths[tensor] = "residual_quantizer_{}_{}".format(k, index)
                model.add_submodule(paths[tensor], _activation_quantizer(amax, learn))
                found[tensor] = model.get_submodule(paths[tensor])
            with model.graph.inserting_before(add):
                quantized = model.graph.call_module(paths[tensor], (add.args[index],))
            args = list(add.args)
            args[index] = quantized
            add.args = tuple(args)
    if len(adds) != len(points.adds):
        raise EdgekitError("the student traces to {} residual adds but model.fp32.onnx has {}; re-run the export "
                           "stage (--force-stage export)".format(len(adds), len(points.adds)))
    model.recompile()
    return found


def _config(per_channel: bool) -> Dict[str, Any]:
    """INT8 on convolution inputs (per tensor) and weights (per output channel, or per tensor)."""
    return {"quant_cfg": [{"quantizer_name": "*", "enable": False},
                          {"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": 8, "axis": 0 if per_channel
                                                                          else None}},
                          {"quantizer_name": "*input_quantizer", "cfg": {"num_bits": 8, "axis": None}}],
            "algorithm": "max"}


def qat_model(student: nn.Module, fp32_model: Any, qdq_model: Any, per_channel: bool,
              learn_scales: bool = True) -> QatModel:
    """The student quantized as `qdq_model` is (its scales, its kept layers): Model Optimizer's quantized
    convolutions, the activation scales learned from there (`learn_scales`) or held."""
    mtq = _mtq()

    points = quant_points(qdq_model)
    folded = _fold(student)
    paired = _paired_convs(folded, fp32_model)
    with _quiet():
        model = mtq.quantize(copy.deepcopy(folded), _config(per_channel), forward_loop=None)
    quantizers: Dict[str, nn.Module] = {}
    paths: Dict[str, str] = {}
    for name, module in model.named_modules():
        if name not in paired:  # the classifier and the pooling stay float, as in the PTQ flavour
            for quantizer in ("input_quantizer", "weight_quantizer", "output_quantizer"):
                if hasattr(module, quantizer):
                    getattr(module, quantizer).disable()
    for name, node in paired.items():
        conv, point = model.get_submodule(name), points.convs[node.name]
        if point.tensor is None:
            conv.input_quantizer.disable()
            conv.weight_quantizer.disable()
            continue
        if point.tensor in paths:  # two convolutions read one tensor: one quantizer, as one Q/DQ pair
            conv.input_quantizer = model.get_submodule(paths[point.tensor])
        else:
            conv.input_quantizer = _activation_quantizer(point.amax, learn_scales)
            paths[point.tensor] = name + ".input_quantizer"
            quantizers[point.tensor] = conv.input_quantizer
        # weight amax from the weights at every step: what the export computes from the trained weights
        if hasattr(conv.weight_quantizer, "_amax"):
            delattr(conv.weight_quantizer, "_amax")
    quantizers.update(_residual_quantizers(model, paired, points, paths, learn_scales))
    return QatModel(model, list(paired), quantizers, folded)


def learned_ranges(qat: QatModel, ptq: Ranges) -> Ranges:
    """The PTQ ranges with each quantized activation's range rescaled to its quantizer's amax now."""
    found = dict(ptq)
    for tensor, quantizer in qat.quantizers.items():
        low, high = ptq[tensor]
        amax = float(quantizer.amax)
        old = max(abs(low), abs(high)) or 1.0
        found[tensor] = (low * amax / old, high * amax / old)
    return found


# --------------------------------------------------------------------------- the export

def float_student(qat: QatModel) -> nn.Module:
    """The folded student with the trained weights and no quantizers."""
    state = {k: v for k, v in qat.model.state_dict().items() if k in qat.float_model.state_dict()}
    missing = set(qat.float_model.state_dict()) - set(state)
    if missing:
        raise EdgekitError("the QAT model lost parameter {}".format(sorted(missing)[0]))
    qat.float_model.load_state_dict(state)
    return qat.float_model.eval()


def trained_fp32(qat: QatModel, fp32_model: Any, image_size: int) -> Any:
    """The FP32 ONNX graph the PTQ models came from, holding the trained weights: exported from the float
    student, then copied initializer by initializer onto the original graph's nodes (same names, so the
    calibration ranges and the kept-layer list still apply)."""
    import onnx

    from ...export import export_onnx

    with tempfile.TemporaryDirectory(prefix="edgekit-qat-") as tmp:
        path = os.path.join(tmp, "qat.fp32.onnx")
        export_onnx(float_student(qat), path, image_size)
        trained = onnx.load(path)
    old_nodes, new_nodes = list(fp32_model.graph.node), list(trained.graph.node)
    if [n.op_type for n in old_nodes] != [n.op_type for n in new_nodes]:
        raise EdgekitError("the QAT student exports to another graph than model.fp32.onnx; re-run the export stage")
    out = onnx.ModelProto.FromString(fp32_model.SerializeToString())
    old_inits = {t.name: t for t in out.graph.initializer}
    new_inits = {t.name: t for t in trained.graph.initializer}
    for old, new in zip(old_nodes, new_nodes):
        for a, b in zip(old.input, new.input):
            if a in old_inits and b in new_inits:
                if list(old_inits[a].dims) != list(new_inits[b].dims):
                    raise EdgekitError("the QAT student's {} has another shape than model.fp32.onnx's".format(b))
                old_inits[a].CopyFrom(new_inits[b])
                old_inits[a].name = a
    return out


def pytorch_top1(model: nn.Module, loader: Any) -> float:
    from ...data import evaluate_top1

    return round(evaluate_top1(model.eval(), loader, torch.device("cpu")), 3)

