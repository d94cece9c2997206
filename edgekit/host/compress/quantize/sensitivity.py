"""Per-layer sensitivity to INT8, and the per-layer error report.

Sensitivity of a convolution: the mean KL divergence of the model's output distribution, with only that
convolution quantized (every other one in float), from the FP32 model's, on held-out calibration images
(training images the calibration did not see). Why this form:
- the error one layer adds alone is a clean signal; with every other layer quantized, one layer's share
  is lost in theirs on a few hundred images;
- KL over the softmax reads every image's whole output, where top-1 on a few hundred images moves in
  steps of a few tenths of a point and is mostly unchanged by one layer;
- it is one onnxruntime pass per convolution over a few hundred images: affordable on a CPU.
The fallback re-measures the real top-1 after each layer it keeps, so what the isolated figure misses
(layers whose errors add up) costs a layer more, never the budget.
"""

from typing import Any, Callable, Dict, List, Optional

import numpy as np

from .evaluate import logits
from .qdq import keep_float, quantized_convs


def kl_divergence(reference: np.ndarray, other: np.ndarray) -> float:
    """Mean over images of KL(softmax(reference) || softmax(other)), in nats."""
    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64) - x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    log_p, log_q = log_softmax(reference), log_softmax(other)
    return float((np.exp(log_p) * (log_p - log_q)).sum(axis=1).mean())


def sensitivity(qdq_model: Any, fp32_logits: np.ndarray, images: np.ndarray, threads: Optional[int] = None,
                log: Callable[[str], None] = lambda line: None) -> List[Dict[str, Any]]:
    """Each quantized convolution of `qdq_model` with its KL (only it quantized), most sensitive first."""
    convs = quantized_convs(qdq_model)
    found = []
    for k, conv in enumerate(convs, 1):
        alone = keep_float(qdq_model, [c for c in convs if c != conv])
        found.append({"node": conv, "kl": round(kl_divergence(fp32_logits, logits(alone, images, threads)), 6)})
        if k % 10 == 0:
            log("  sensitivity: {} of {} layers".format(k, len(convs)))
    found.sort(key=lambda s: -s["kl"])
    return found


def quantization_error(fp32_path: str, int8_path: str, images: np.ndarray,
                       input_name: str = "input", top: Optional[int] = None) -> List[Dict[str, object]]:
    """Per-layer error of INT8 vs FP32 activations on the same images, worst first.

    Compares every tensor produced by a Conv or Gemm node that exists in both models (Q/DQ keeps
    the FP32 model's tensor names for the layers' outputs): RMSE and SQNR in dB
    (10·log10(signal power / noise power)). The INT8 error accumulates through the network, so a
    layer's figure includes what earlier layers contributed.
    """
    import onnx

    fp32 = onnx.load(fp32_path)
    int8 = onnx.load(int8_path)
    layers = [(n.name or n.output[0], n.output[0], n.op_type) for n in fp32.graph.node if n.op_type in ("Conv", "Gemm")]
    produced = {o for n in int8.graph.node for o in n.output}
    layers = [item for item in layers if item[1] in produced]
    names = [item[1] for item in layers]
    reference, quantized = _tensors(fp32, names, images, input_name), _tensors(int8, names, images, input_name)
    report = []
    for (node, tensor, op), ref, got in zip(layers, reference, quantized):
        noise = float(np.mean((ref.astype(np.float64) - got) ** 2))
        signal = float(np.mean(ref.astype(np.float64) ** 2))
        sqnr = 10.0 * np.log10(signal / noise) if noise > 0 else float("inf")
        report.append({"node": node, "tensor": tensor, "op": op, "rmse": round(float(np.sqrt(noise)), 6),
                       "sqnr_db": round(float(sqnr), 3)})
    report.sort(key=lambda r: r["sqnr_db"])
    return report[:top] if top else report


def _tensors(model: Any, names: List[str], images: np.ndarray, input_name: str) -> List[np.ndarray]:
    import onnx
    import onnxruntime as ort

    model = onnx.ModelProto.FromString(model.SerializeToString())
    existing = {o.name for o in model.graph.output}
    for name in names:
        if name not in existing:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(names, {input_name: images.astype(np.float32)})
