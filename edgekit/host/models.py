"""ResNet-50: construction, safe checkpoint loading, width specs, MACs and parameter counts.

A pruned ResNet-50 is stored as data: a *width spec* (the channel count of every layer that
pruning can change) plus a plain state_dict. It reloads with `torch.load(weights_only=True)`,
never by unpickling a module.

Width spec layout (JSON-able)::

    {"arch": "resnet50",
     "stem": 64,                                  # conv1 / bn1 output channels
     "stages": [{"out": 256,                      # every block's conv3 (and downsample) output
                 "blocks": [[64, 64], ...]},      # per bottleneck: conv1 and conv2 outputs
                ...]}

The stage output width is shared by all blocks of a stage because the residual additions tie them
together; `width_spec_of` checks that coupling and refuses a model that breaks it.
"""

import os
import pickle
import re
import zipfile
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
import torchvision
from torch import nn

from ..errors import EdgekitError

ARCH = "resnet50"
STUDENT_FORMAT = "edgekit.model/1"  # width spec + state_dict; teacher and students alike
RESNET50_BLOCKS = (3, 4, 6, 3)

WidthSpec = Dict[str, Any]


def resnet50(num_classes: int = 1000, zero_init_residual: bool = False) -> nn.Module:
    """torchvision's ResNet-50 (v1.5), randomly initialised; weights are never downloaded."""
    return torchvision.models.resnet50(weights=None, num_classes=num_classes,
                                       zero_init_residual=zero_init_residual)


# --------------------------------------------------------------------------- width specs

def width_spec_of(model: nn.Module) -> WidthSpec:
    """Read the width spec of a (possibly pruned) torchvision ResNet-50, checking its coupling."""
    def fail(msg: str) -> None:
        raise ValueError("inconsistent ResNet-50 widths: " + msg)

    stem = model.conv1.out_channels
    if model.bn1.num_features != stem:
        fail("bn1 has {} features, conv1 has {} outputs".format(model.bn1.num_features, stem))
    stages = []
    in_ch = stem
    for s, layer in enumerate((model.layer1, model.layer2, model.layer3, model.layer4), start=1):
        blocks = []
        out = None
        for b, block in enumerate(layer):
            name = "layer{}.{}".format(s, b)
            if block.conv1.in_channels != in_ch:
                fail("{}.conv1 takes {} channels but the previous block gives {}".format(
                    name, block.conv1.in_channels, in_ch))
            if block.conv2.in_channels != block.conv1.out_channels or \
                    block.conv3.in_channels != block.conv2.out_channels:
                fail("{} convolutions do not chain".format(name))
            for conv, bn in ((block.conv1, block.bn1), (block.conv2, block.bn2), (block.conv3, block.bn3)):
                if bn.num_features != conv.out_channels:
                    fail("{} BatchNorm width differs from its convolution".format(name))
            block_out = block.conv3.out_channels
            if block.downsample is not None:
                if block.downsample[0].in_channels != in_ch or block.downsample[0].out_channels != block_out:
                    fail("{}.downsample does not match the residual it is added to".format(name))
            elif block_out != in_ch:
                fail("{} adds a {}-channel identity to a {}-channel output".format(name, in_ch, block_out))
            if out is not None and block_out != out:
                fail("{} outputs {} channels, its stage outputs {}".format(name, block_out, out))
            out = block_out
            blocks.append([block.conv1.out_channels, block.conv2.out_channels])
            in_ch = block_out
        stages.append({"out": out, "blocks": blocks})
    if model.fc.in_features != in_ch:
        fail("fc takes {} features, layer4 gives {}".format(model.fc.in_features, in_ch))
    return {"arch": ARCH, "stem": stem, "stages": stages}


def check_width_spec(spec: Any) -> WidthSpec:
    """Validate a width spec read from a file; raise EdgekitError on a malformed one."""
    def bad(msg: str) -> EdgekitError:
        return EdgekitError("malformed width spec: " + msg)

    if not isinstance(spec, dict) or spec.get("arch") != ARCH:
        raise bad("expected a mapping with arch 'resnet50'")
    if not isinstance(spec.get("stem"), int) or spec["stem"] < 1:
        raise bad("stem must be a positive integer")
    stages = spec.get("stages")
    if not isinstance(stages, list) or len(stages) != 4:
        raise bad("expected 4 stages")
    for i, (stage, n_blocks) in enumerate(zip(stages, RESNET50_BLOCKS), start=1):
        if not isinstance(stage, dict) or not isinstance(stage.get("out"), int) or stage["out"] < 1:
            raise bad("stage {} needs a positive integer 'out'".format(i))
        blocks = stage.get("blocks")
        if not isinstance(blocks, list) or len(blocks) != n_blocks:
            raise bad("stage {} needs {} blocks".format(i, n_blocks))
        for block in blocks:
            if not (isinstance(block, list) and len(block) == 2
                    and all(isinstance(w, int) and w >= 1 for w in block)):
                raise bad("stage {} blocks must be [conv1, conv2] pairs of positive integers".format(i))
    return spec



def _conv_like(conv: nn.Conv2d, cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                     conv.groups, bias=conv.bias is not None)


def resnet50_from_width_spec(spec: WidthSpec, num_classes: int) -> nn.Module:
    """Build a ResNet-50 with the channel counts of `spec` (weights random; load a state_dict)."""
    spec = check_width_spec(spec)
    model = resnet50(num_classes=num_classes)
    model.conv1 = _conv_like(model.conv1, 3, spec["stem"])
    model.bn1 = nn.BatchNorm2d(spec["stem"])
    in_ch = spec["stem"]
    for layer, stage in zip((model.layer1, model.layer2, model.layer3, model.layer4), spec["stages"]):
        out = stage["out"]
        for block, (mid1, mid2) in zip(layer, stage["blocks"]):
            block.conv1 = _conv_like(block.conv1, in_ch, mid1)
            block.bn1 = nn.BatchNorm2d(mid1)
            block.conv2 = _conv_like(block.conv2, mid1, mid2)
            block.bn2 = nn.BatchNorm2d(mid2)
            block.conv3 = _conv_like(block.conv3, mid2, out)
            block.bn3 = nn.BatchNorm2d(out)
            if block.downsample is not None:
                block.downsample[0] = _conv_like(block.downsample[0], in_ch, out)
                block.downsample[1] = nn.BatchNorm2d(out)
            in_ch = out
    model.fc = nn.Linear(in_ch, num_classes)
    return model


# --------------------------------------------------------------------------- counting

def count_macs_params(model: nn.Module, image_size: int) -> Tuple[int, int]:
    """Multiply-accumulates of one forward pass at `image_size`² (batch 1), and parameters."""
    import torch_pruning as tp

    was_training = model.training
    example = torch.zeros(1, 3, image_size, image_size,
                          device=next(model.parameters()).device)
    macs, params = tp.utils.count_ops_and_params(model, example)
    model.train(was_training)
    return int(macs), int(params)



def _torch_load(path: str) -> Any:
    if not os.path.exists(path):
        raise EdgekitError("checkpoint not found: {}".format(path))
    if not os.path.isfile(path):
        raise EdgekitError("checkpoint {} is not a file".format(path))
    if not os.access(path, os.R_OK):
        raise EdgekitError("checkpoint {} is not readable (permissions)".format(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses two different things: a pickle that names a Python callable (which
        # a plain load would import and call) and bytes that are not a pickle at all.
        found = re.search(r"global ([\w.]+)", str(exc), re.IGNORECASE)
        if found:
            raise EdgekitError(
                "checkpoint {} contains pickled Python objects that could run code when loaded ({}); "
                "refusing it (weights_only). Re-save it as a plain state_dict: "
                "torch.save(model.state_dict(), path)".format(path, found.group(1))) from None
        raise EdgekitError("checkpoint {} is truncated or not a PyTorch file; "
                           "re-download or re-save it".format(path)) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError,
            IndexError, TypeError, AttributeError) as exc:
        raise EdgekitError("checkpoint {} is truncated or not a PyTorch file ({}); "
                           "re-download or re-save it".format(path, _first_line(exc))) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def extract_state_dict(obj: Any, path: str) -> Dict[str, torch.Tensor]:
    """Find the state_dict in what torch.load returned: itself, or a dict holding one."""
    if _is_state_dict(obj):
        state = obj
    elif isinstance(obj, dict):
        state = None
        for key in ("state_dict", "model_state_dict", "model", "net", "module", "weights"):
            if _is_state_dict(obj.get(key)):
                state = obj[key]
                break
        if state is None:
            candidates = [k for k, v in obj.items() if _is_state_dict(v)]
            if len(candidates) == 1:
                state = obj[candidates[0]]
        if state is None:
            raise EdgekitError(
                "checkpoint {} holds no state_dict (top-level keys: {}); save "
                "model.state_dict() or a dict with a 'state_dict' entry".format(
                    path, ", ".join(map(str, list(obj)[:8])) or "none"))
    else:
        raise EdgekitError("checkpoint {} holds a {}, not a state_dict".format(path, type(obj).__name__))
    # DistributedDataParallel and DataParallel save every key with a "module." prefix.
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def load_resnet50_checkpoint(path: str, num_classes: Optional[int] = None,
                             log: Any = print) -> Tuple[nn.Module, Dict[str, Any]]:
    """Load a torchvision-format ResNet-50 checkpoint (dense or an edgekit student).

    `num_classes` different from the checkpoint's head replaces the head (new, untrained) and says
    so. Returns the model and facts about the load (`head_replaced`, `num_classes`, `width_spec`).
    """
    obj = _torch_load(path)
    if isinstance(obj, dict) and obj.get("format") == STUDENT_FORMAT:
        model, info = _student_from_obj(obj, path)
        if num_classes is not None and num_classes != info["num_classes"]:
            raise EdgekitError("student {} has {} classes, the data has {}".format(
                path, info["num_classes"], num_classes))
        return model, dict(info, head_replaced=False)
    state = extract_state_dict(obj, path)
    reference = resnet50(num_classes=1000).state_dict()
    body = [k for k in reference if not k.startswith("fc.")]
    missing = [k for k in body if k not in state]
    unexpected = [k for k in state if k not in reference]
    if missing or unexpected:
        detail = []
        if missing:
            detail.append("{} ResNet-50 keys missing (e.g. {})".format(len(missing), missing[0]))
        if unexpected:
            detail.append("{} unexpected keys (e.g. {})".format(len(unexpected), unexpected[0]))
        raise EdgekitError("checkpoint {} is not a torchvision ResNet-50: {}".format(path, "; ".join(detail)))
    wrong = [k for k in body if tuple(state[k].shape) != tuple(reference[k].shape)]
    if wrong:
        raise EdgekitError(
            "checkpoint {} is not a dense ResNet-50: {} has shape {}, expected {} (a pruned "
            "model needs its width spec: load an edgekit student file)".format(
                path, wrong[0], tuple(state[wrong[0]].shape), tuple(reference[wrong[0]].shape)))
    if "fc.weight" not in state or "fc.bias" not in state:
        raise EdgekitError("checkpoint {} has no classifier (fc.weight, fc.bias)".format(path))
    ckpt_classes = int(state["fc.weight"].shape[0])
    classes = num_classes or ckpt_classes
    model = resnet50(num_classes=classes)
    head_replaced = classes != ckpt_classes
    if head_replaced:
        log("checkpoint {} has a {}-class head; the data has {} classes, so the head is replaced "
            "by a new {}-class layer (trained during fine-tuning)".format(path, ckpt_classes, classes, classes))
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    model.load_state_dict(state, strict=not head_replaced)
    return model, {"num_classes": classes, "head_replaced": head_replaced,
                   "width_spec": width_spec_of(model)}


def _student_from_obj(obj: Dict[str, Any], path: str) -> Tuple[nn.Module, Dict[str, Any]]:
    spec = obj.get("width_spec")
    classes = obj.get("num_classes")
    if not isinstance(classes, int):
        raise EdgekitError("student {} has no num_classes".format(path))
    model = architecture(obj.get("arch") or ARCH).from_width_spec(spec, classes)
    try:
        model.load_state_dict(obj["state_dict"])
    except (KeyError, RuntimeError) as exc:
        raise EdgekitError("student {} weights do not match its width spec ({})".format(
            path, _first_line(exc))) from None
    return model, {"num_classes": classes, "width_spec": spec, "meta": obj.get("meta", {})}


def save_student(path: str, model: nn.Module, meta: Optional[Dict[str, Any]] = None) -> WidthSpec:
    """Save a (pruned) ResNet-50 as width spec + state_dict, atomically."""
    from ..artifacts import atomic_path

    spec = width_spec_of(model)
    obj = {"format": STUDENT_FORMAT, "arch": ARCH, "num_classes": model.fc.out_features,
           "width_spec": spec, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
           "meta": meta or {}}
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return spec


def load_student(path: str) -> Tuple[nn.Module, Dict[str, Any]]:
    obj = _torch_load(path)
    if not (isinstance(obj, dict) and obj.get("format") == STUDENT_FORMAT):
        raise EdgekitError("{} is not an edgekit student file (format {})".format(path, STUDENT_FORMAT))
    return _student_from_obj(obj, path)


def widths_summary(spec: WidthSpec) -> List[int]:
    """Stage output widths, for one-line logs."""
    return [spec["stem"]] + [s["out"] for s in spec["stages"]]


# --------------------------------------------------------------------------- architectures

class Architecture(NamedTuple):
    """What the pipeline needs of a model family: the teacher stage builds or loads it, student files
    rebuild it from their width spec (`model.arch` in the recipe, `arch` in the file)."""
    name: str
    build: Callable[..., nn.Module]                         # (num_classes, zero_init_residual=...) -> dense
    from_width_spec: Callable[[WidthSpec, int], nn.Module]  # (spec, num_classes) -> model, weights random
    load_checkpoint: Callable[..., Tuple[nn.Module, Dict[str, Any]]]   # (path, num_classes, log=...)


ARCHITECTURES: Dict[str, Architecture] = {}


def register_architecture(arch: Architecture) -> Architecture:
    ARCHITECTURES[arch.name] = arch
    return arch


def architecture(name: str) -> Architecture:
    """The registered architecture `name`, or one line naming the registered ones."""
    if name not in ARCHITECTURES:
        raise EdgekitError("unknown model.arch {!r}; registered architectures: {}".format(
            name, ", ".join(sorted(ARCHITECTURES))))
    return ARCHITECTURES[name]


register_architecture(Architecture(ARCH, resnet50, resnet50_from_width_spec, load_resnet50_checkpoint))
