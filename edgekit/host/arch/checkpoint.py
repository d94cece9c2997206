"""Model files: safe loading, torchvision-layout checkpoints, and edgekit's own student files.

Everything is read with `torch.load(weights_only=True)`: tensors and plain containers only, never a
pickled callable. Two kinds of file load:

- a torchvision-layout checkpoint: a state_dict (or a dict holding one; DataParallel's "module."
  prefix is stripped) of a dense model, whose head is replaced when the data has another class count;
- an edgekit model file (teacher.pt, student.pt, rounds/*.pt): `{"format": "edgekit.model/2", "arch",
  "num_classes", "width_spec", "state_dict", "meta"}`, rebuilt from its width spec. Files of the
  first format (`edgekit.model/1`, ResNet-50's stem/stages spec) still load.
"""

import os
import pickle
import re
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from ...errors import EdgekitError
from ...widthspec import is_legacy

STUDENT_FORMAT = "edgekit.model/2"
LEGACY_FORMATS = ("edgekit.model/1",)
_STATE_KEYS = ("state_dict", "model_state_dict", "model", "net", "module", "weights")
# torch.save writes a zip archive; before PyTorch 1.6 it wrote a protocol-2 pickle.
_MAGIC = (b"PK\x03\x04", b"\x80\x02")


def torch_load(path: str) -> Any:
    """What torch.load returns for `path` (weights only), or one EdgekitError saying what the file is."""
    if not os.path.exists(path):
        raise EdgekitError("checkpoint not found: {}".format(path))
    if not os.path.isfile(path):
        raise EdgekitError("checkpoint {} is not a file".format(path))
    if not os.access(path, os.R_OK):
        raise EdgekitError("checkpoint {} is not readable (permissions)".format(path))
    with open(path, "rb") as f:
        head = f.read(64)
    if not head.startswith(_MAGIC):
        raise EdgekitError("checkpoint {} is not a PyTorch file ({}); give one written by torch.save, e.g. "
                           "torch.save(model.state_dict(), path)".format(path, _looks_like(head)))
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
    except Exception as exc:  # noqa: BLE001 - a damaged archive fails in many ways, all of them the file's
        raise EdgekitError("checkpoint {} is truncated or not a PyTorch file ({}); "
                           "re-download or re-save it".format(path, first_line(exc))) from None


def _looks_like(head: bytes) -> str:
    if not head:
        return "it is empty"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "it starts with bytes {!r}".format(head[:8])
    if all(c.isprintable() or c in "\r\n\t" for c in text):
        return "it is text, starting {!r}".format(text.strip().splitlines()[0][:40] if text.strip() else text[:8])
    return "it starts with bytes {!r}".format(head[:8])


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def extract_state_dict(obj: Any, path: str) -> Dict[str, torch.Tensor]:
    """Find the state_dict in what torch.load returned: itself, or a dict holding one."""
    if not isinstance(obj, dict):
        raise EdgekitError("checkpoint {} holds a {}, not a state_dict".format(path, type(obj).__name__))
    state = obj if _is_state_dict(obj) else next((obj[k] for k in _STATE_KEYS if _is_state_dict(obj.get(k))), None)
    if state is None:
        candidates = [k for k, v in obj.items() if _is_state_dict(v)]
        if len(candidates) != 1:
            raise EdgekitError(
                "checkpoint {} holds no state_dict (top-level keys: {}); save "
                "model.state_dict() or a dict with a 'state_dict' entry".format(
                    path, ", ".join(map(str, list(obj)[:8])) or "none"))
        state = obj[candidates[0]]
    # DistributedDataParallel and DataParallel save every key with a "module." prefix.
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


# --------------------------------------------------------------------------- torchvision-layout checkpoints

def load_checkpoint(arch: Any, path: str, num_classes: Optional[int] = None,
                    log: Callable[[str], None] = print) -> Tuple[nn.Module, Dict[str, Any]]:
    """Load a checkpoint of `arch` (a dense torchvision-layout one, or an edgekit model file).

    `num_classes` different from the checkpoint's head replaces the head (new, untrained) and says
    so. Returns the model and facts about the load (`arch`, `num_classes`, `head_replaced`, `width_spec`).
    """
    obj = torch_load(path)
    if is_model_file(obj):
        model, info = model_from_file(obj, path)
        if info["arch"] != arch.name:
            raise EdgekitError("{} holds a {} model, but model.arch is {}; set model.arch: {}".format(
                path, info["arch"], arch.name, info["arch"]))
        if num_classes is not None and num_classes != info["num_classes"]:
            raise EdgekitError("model {} has {} classes, the data has {}".format(path, info["num_classes"],
                                                                              num_classes))
        return model, dict(info, head_replaced=False)
    return _from_state(arch, extract_state_dict(obj, path), path, num_classes, log)


def load_any(path: str, log: Callable[[str], None] = print) -> Tuple[nn.Module, Dict[str, Any]]:
    """A model file or checkpoint of any registered architecture (an edgekit file names its own; a
    state_dict is matched by its keys, else read as ResNet-50, whose messages then say what differs)."""
    obj = torch_load(path)
    if is_model_file(obj):
        return model_from_file(obj, path)
    from . import architecture

    state = extract_state_dict(obj, path)
    found = detect_architecture(state)
    return _from_state(architecture(found[0] if found else "resnet50"), state, path, None, log)


def _from_state(arch: Any, state: Dict[str, torch.Tensor], path: str, num_classes: Optional[int],
                log: Callable[[str], None]) -> Tuple[nn.Module, Dict[str, Any]]:
    state = arch.adapt_state_dict(state)
    head = arch.head + "."
    weight = state.get(head + "weight")
    ckpt_classes = int(weight.shape[0]) if weight is not None and weight.dim() == 2 else None
    classes = num_classes or ckpt_classes or 1000
    model = arch.build(classes)
    _check_body(arch, model.state_dict(), state, path)
    if ckpt_classes is None or head + "bias" not in state:
        raise EdgekitError("checkpoint {0} has no classifier ({1}weight, {1}bias)".format(path, head))
    head_replaced = classes != ckpt_classes
    if head_replaced:
        log("checkpoint {} has a {}-class head; the data has {} classes, so the head is replaced "
            "by a new {}-class layer (trained during fine-tuning)".format(path, ckpt_classes, classes, classes))
        state = {k: v for k, v in state.items() if not k.startswith(head)}
    model.load_state_dict(state, strict=not head_replaced)
    return model, {"arch": arch.name, "num_classes": classes, "head_replaced": head_replaced,
                   "width_spec": arch.width_spec(model)}


def _check_body(arch: Any, reference: Dict[str, torch.Tensor], state: Dict[str, torch.Tensor], path: str) -> None:
    head = arch.head + "."
    body = [k for k in reference if not k.startswith(head)]
    missing = [k for k in body if k not in state]
    unexpected = [k for k in state if k not in reference]
    if missing or unexpected:
        _refuse_other_architecture(arch, state, path)
        detail = []
        if missing:
            detail.append("{} {} keys missing (e.g. {})".format(len(missing), arch.title, missing[0]))
        if unexpected:
            detail.append("{} unexpected keys (e.g. {})".format(len(unexpected), unexpected[0]))
        raise EdgekitError("checkpoint {} is not a torchvision {}: {}".format(path, arch.title, "; ".join(detail)))
    wrong = [k for k in body if tuple(state[k].shape) != tuple(reference[k].shape)]
    if wrong:
        raise EdgekitError(
            "checkpoint {} is not a dense {}: {} has shape {}, expected {} (a pruned model needs its width "
            "spec: load an edgekit model file)".format(path, arch.title, wrong[0], tuple(state[wrong[0]].shape),
                                                        tuple(reference[wrong[0]].shape)))


def _refuse_other_architecture(arch: Any, state: Dict[str, torch.Tensor], path: str) -> None:
    """If the keys are exactly another registered architecture's, say which one to set."""
    from . import architecture, names

    for name in names():
        if name == arch.name:
            continue
        try:
            other = architecture(name)
            keys = set(_meta_state_dict(other))
        except EdgekitError:
            continue  # a broken plugin cannot be what this checkpoint is
        if set(other.adapt_state_dict(state)) == keys:
            raise EdgekitError("checkpoint {} is a torchvision {}, not a {}: set model.arch: {}".format(
                path, other.title, arch.title, name))


def _meta_state_dict(arch: Any) -> Dict[str, torch.Tensor]:
    """`arch`'s dense state_dict as shapes only: built on the meta device, no memory, no random draws."""
    with torch.device("meta"):
        return arch.build(1000).state_dict()


def detect_architecture(state: Dict[str, torch.Tensor]) -> List[str]:
    """Names of the registered architectures whose dense keys are exactly `state`'s."""
    from . import architecture, names

    found = []
    for name in names():
        try:
            arch = architecture(name)
            if set(arch.adapt_state_dict(state)) == set(_meta_state_dict(arch)):
                found.append(name)
        except EdgekitError:
            continue
    return found


# --------------------------------------------------------------------------- edgekit model files

def is_model_file(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") in (STUDENT_FORMAT,) + LEGACY_FORMATS


def model_from_file(obj: Dict[str, Any], path: str) -> Tuple[nn.Module, Dict[str, Any]]:
    """The model an edgekit model file describes, and its facts (arch, num_classes, width_spec, meta)."""
    from . import architecture

    spec, classes = obj.get("width_spec"), obj.get("num_classes")
    if not isinstance(classes, int):
        raise EdgekitError("model file {} has no num_classes".format(path))
    if obj["format"] in LEGACY_FORMATS or is_legacy(spec):
        arch = architecture(obj.get("arch") or "resnet50")  # only ResNet-50 files had that format
    else:
        arch = architecture(obj.get("arch") or (spec or {}).get("arch", ""))
    model = arch.from_width_spec(spec, classes)
    try:
        model.load_state_dict(obj["state_dict"])
    except (KeyError, RuntimeError) as exc:
        raise EdgekitError("model file {} weights do not match its width spec ({})".format(
            path, first_line(exc))) from None
    return model, {"arch": arch.name, "num_classes": classes, "width_spec": arch.width_spec(model),
                   "meta": obj.get("meta", {})}


def save_student(path: str, model: nn.Module, arch: Any, meta: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Save a (pruned) model of `arch` as width spec + state_dict, atomically; return the spec."""
    from ...artifacts import atomic_path

    spec = arch.width_spec(model)
    obj = {"format": STUDENT_FORMAT, "arch": arch.name, "num_classes": arch.num_classes(model),
           "width_spec": spec, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
           "meta": meta or {}}
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return spec


def load_student(path: str) -> Tuple[nn.Module, Dict[str, Any]]:
    """An edgekit model file (teacher.pt, student.pt, rounds/*.pt) and its facts."""
    obj = torch_load(path)
    if not is_model_file(obj):
        raise EdgekitError("{} is not an edgekit model file (format {})".format(path, STUDENT_FORMAT))
    return model_from_file(obj, path)
