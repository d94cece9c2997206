"""ONNX export (host): opset 17, named input/output, dynamic batch, checked, verified against PyTorch.

TensorRT 8.5 (the last for Xavier) parses up to opset 17. The TorchScript-based exporter is used
(`dynamo=False`): it folds BatchNorm into the convolutions in eval mode and emits the plain
Conv/Relu/Add/MaxPool/GlobalAveragePool/Flatten/Gemm graph that TensorRT 8.5 and its Q/DQ fusions
expect; the dynamo exporter needs onnxscript and targets newer opsets first.
"""

import os
import warnings
from typing import Dict, Iterable, Optional

import numpy as np
import torch
from torch import nn

from ..artifacts import atomic_path
from ..errors import EdgekitError

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 17


def export_onnx(model: nn.Module, path: str, image_size: int, opset: int = OPSET) -> str:
    """Write `model` (eval mode, CPU, FP32) as ONNX with a dynamic batch axis; checked by onnx.checker."""
    import onnx

    model = model.eval().cpu()
    example = torch.zeros(1, 3, image_size, image_size)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter is not the user's business
        torch.onnx.export(model, (example,), tmp, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], do_constant_folding=True, dynamo=False,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        try:
            onnx.checker.check_model(tmp, full_check=True)
        except onnx.checker.ValidationError as exc:
            raise EdgekitError("exported ONNX fails onnx.checker: {}".format(str(exc).splitlines()[0])) from None
    return path


def onnx_session(path: str, threads: Optional[int] = None):  # noqa: ANN201
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def onnx_logits(path: str, batches: Iterable[torch.Tensor], threads: Optional[int] = None) -> np.ndarray:
    session = onnx_session(path, threads)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: b.numpy().astype(np.float32)})[0] for b in batches])


# FP32 ONNX vs PyTorch: float reassociation and BatchNorm folding move logits by ~1e-6 of their scale;
# a wrong export (a dropped layer, a stale weight, a mis-folded BatchNorm) moves them by far more.
ATOL = 1e-3
RTOL = 1e-3


def check_onnx_matches(path: str, model: nn.Module, images: torch.Tensor, threads: Optional[int] = None,
                       atol: float = ATOL, rtol: float = RTOL) -> Dict[str, float]:
    """Compare the ONNX file with PyTorch on real images (max |logit difference|, top-1 agreement), failing
    with the numbers when they disagree.

    Allowed: max |difference| <= atol + rtol * max |PyTorch logit|. Top-1 disagreements count only
    where PyTorch's top-1 leads its runner-up by more than twice that (a near tie may flip on noise).
    """
    model = model.eval()
    with torch.no_grad():
        reference = model(images).numpy()
    got = onnx_logits(path, [images], threads)
    diff = float(np.abs(got - reference).max())
    allowed = atol + rtol * float(np.abs(reference).max())
    top2 = np.sort(reference, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * allowed
    flipped = int(((got.argmax(1) != reference.argmax(1)) & clear).sum())
    result = {"max_abs_diff": diff, "top1_agreement": float((got.argmax(1) == reference.argmax(1)).mean() * 100.0),
              "samples": int(images.shape[0]), "allowed_abs_diff": allowed}
    if diff > allowed or flipped:
        raise EdgekitError("{} disagrees with PyTorch on {} images: max |logit difference| {:.3g} (allowed {:.3g}), "
                           "top-1 agreement {:.1f}% ({} clear top-1 flips); the export is wrong, not rounded".format(
                               path, result["samples"], diff, allowed, result["top1_agreement"], flipped))
    return result


def convert_fp16(src: str, dst: str) -> str:
    """FP16 weights and activations, FP32 input/output (so the same feed runs on every model)."""
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = float16.convert_float_to_float16(model, keep_io_types=True)
    with atomic_path(dst) as tmp:
        onnx.save(half, tmp)
        onnx.checker.check_model(tmp)
    return dst


def file_mb(path: str) -> float:
    return round(os.path.getsize(path) / 1e6, 3)
