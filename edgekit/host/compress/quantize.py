"""INT8 post-training quantization: one calibration on real samples, three artifacts.

- `model.int8.cpu.onnx`: uint8 activations, int8 per-channel weights (Q/DQ format that
  onnxruntime's CPU provider fuses into QLinearConv; the fast path on x86 and ARM CPUs);
- `model.int8.qdq.onnx`: for TensorRT's explicit quantization: symmetric int8 activations (zero
  points 0), int8 per-channel symmetric weights, Q/DQ on every convolution's inputs and on the
  residual input of every Add, so TensorRT fuses the Add into the convolution that feeds it instead
  of running it in FP16 (TensorRT's Q/DQ placement guide); the classifier stays FP32;
- `calib.cache`: the same calibration in TensorRT's calibration-cache text format for implicit INT8
  (what DLA on Xavier's TensorRT 8.5 needs, since it cannot take Q/DQ).

The calibration itself is onnxruntime's (entropy, percentile or min-max), run once and kept in
`calib.ranges.json`; both flavours are quantized from that file.
"""

import contextlib
import io
import json
import logging
import os
import warnings
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from ...artifacts import atomic_path
from ...device import layout
from ...device.engine import calibcache
from ...errors import EdgekitError

METHODS = ("entropy", "percentile", "minmax")


def _ort_method(method: str):  # noqa: ANN202
    from onnxruntime.quantization import CalibrationMethod

    table = {"entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile,
             "minmax": CalibrationMethod.MinMax}
    if method not in table:
        raise EdgekitError("unknown calibration method {!r}; choose one of {}".format(method, ", ".join(METHODS)))
    return table[method]


def _reader(batches: List[np.ndarray], input_name: str):  # noqa: ANN202
    from onnxruntime.quantization import CalibrationDataReader

    # One sample per run: onnxruntime's histogram calibrators stack the outputs of all runs and fail
    # on batches of different sizes (the last one of a split usually is).
    samples = [batch[i:i + 1] for batch in batches for i in range(batch.shape[0])]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(samples)

        def get_next(self):  # noqa: ANN202
            batch = next(self.items, None)
            return None if batch is None else {input_name: batch.astype(np.float32)}

        def __len__(self) -> int:
            return len(samples)

    return Reader()


def calibration_ranges(cache_json: str) -> Dict[str, Tuple[float, float]]:
    """Tensor name -> (min, max) from onnxruntime's calibration cache."""
    with open(cache_json, encoding="utf-8") as f:
        data = json.load(f)
    out = {}
    for name, entry in data.get("data", {}).items():
        low, high = entry.get("lowest"), entry.get("highest")
        if low is None and "range_value" in entry:
            low, high = entry["range_value"]
        if low is None or high is None:
            continue
        out[name] = (float(np.asarray(low).reshape(-1)[0]), float(np.asarray(high).reshape(-1)[0]))
    return out


def write_trt_calibration_cache(path: str, ranges: Dict[str, Tuple[float, float]], tensors: Iterable[str],
                                trt_version: str = "8.5.2") -> int:
    """TensorRT's calibration cache for `trt_version` (EntropyCalibration2, the calibrator DLA needs,
    whatever method found the ranges). Returns the number of tensors written."""
    return calibcache.write_calibration_cache(path, calibcache.scales_from_ranges(ranges, tensors), trt_version)


def _graph_tensors(model) -> List[str]:  # noqa: ANN001
    """Every activation tensor in graph order (inputs first), excluding initializers."""
    init = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in init]
    for node in model.graph.node:
        names.extend(o for o in node.output if o and o not in init)
    return names


def add_residual_qdq(model, ranges: Dict[str, Tuple[float, float]]) -> int:  # noqa: ANN001
    """Put a symmetric int8 Q/DQ pair on the residual input of every Add (in place); return how many.

    The residual is the Add input that does not come straight from the convolution TensorRT will
    fuse the Add into (`_residual_input`). An existing Q/DQ pair on the same tensor (the next block's
    convolution already reads it through one) is shared.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    consumers_dq = {}  # tensor -> output of a DequantizeLinear fed by QuantizeLinear(tensor)
    q_out = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    for n in graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in q_out:
            consumers_dq.setdefault(q_out[n.input[0]], n.output[0])
    dq_outputs = set(consumers_dq.values())
    readers: Dict[str, int] = {}
    for n in graph.node:
        for name in n.input:
            readers[name] = readers.get(name, 0) + 1
    new_nodes = []
    added = 0
    for node in graph.node:
        if node.op_type == "Add" and len(node.input) == 2 and not (set(node.input) & initializers):
            side = _residual_input(node, readers)
            residual = node.input[side]
            if residual in dq_outputs:
                pass
            elif residual in consumers_dq:
                node.input[side] = consumers_dq[residual]
                added += 1
            else:
                if residual not in ranges:
                    raise EdgekitError("no calibration range for tensor {} (input of {}); recalibrate".format(
                        residual, node.name))
                amax = max(abs(ranges[residual][0]), abs(ranges[residual][1])) or 1.0
                base = residual + "_residual"
                graph.initializer.extend([
                    numpy_helper.from_array(np.array(amax / 127.0, dtype=np.float32), base + "_scale"),
                    numpy_helper.from_array(np.array(0, dtype=np.int8), base + "_zero_point")])
                new_nodes.append((node.name, [
                    helper.make_node("QuantizeLinear", [residual, base + "_scale", base + "_zero_point"],
                                     [base + "_q"], name=base + "_QuantizeLinear"),
                    helper.make_node("DequantizeLinear", [base + "_q", base + "_scale", base + "_zero_point"],
                                     [base + "_dq"], name=base + "_DequantizeLinear")]))
                consumers_dq[residual] = base + "_dq"
                dq_outputs.add(base + "_dq")
                node.input[side] = base + "_dq"
                added += 1
    if new_nodes:
        # keep the node list topologically sorted: each new pair goes right before its Add
        before = dict(new_nodes)
        ordered = []
        for node in graph.node:
            ordered.extend(before.get(node.name, []))
            ordered.append(node)
        del graph.node[:]
        graph.node.extend(ordered)
    return added


def _residual_input(add, readers: Dict[str, int]) -> int:  # noqa: ANN001
    """Which input of a residual Add is the skip connection: the one that is also read elsewhere (a
    block's input feeds its first convolution too), where the branch's last convolution feeds the Add
    alone. ResNet's `out += identity` and MobileNetV3's `result += input` put it second, MobileNetV2's
    `x + self.conv(x)` first; when both or neither are shared (a downsampling shortcut), the second."""
    shared = [readers.get(name, 0) > 1 for name in add.input]
    return 0 if shared[0] and not shared[1] else 1


def quantize_cpu(fp32_path: str, dst: str, calibration: List[np.ndarray], method: str = "entropy",
                 ranges_path: Optional[str] = None, input_name: str = "input", reduce_range: bool = True) -> str:
    """The onnxruntime CPU flavour: uint8 activations, int8 per-channel weights, Q/DQ format.

    With `ranges_path` the calibration is saved there (or reused from there if it exists).
    `reduce_range` keeps weights to 7 bits: on x86 CPUs without VNNI (AVX2 only, like CI's), the
    u8×s8 multiply-add instruction saturates its 16-bit pair sums with full 8-bit weights and top-1
    drops (measured on the digits student: 96.94% with 8-bit weights, 98.05% with 7, FP32 98.05%).
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    ort_method = _ort_method(method)
    with warnings.catch_warnings(), atomic_path(dst) as tmp, _quiet():
        warnings.simplefilter("ignore")
        quantize_static(fp32_path, tmp, _reader(calibration, input_name) if calibration else None,
                        quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=ort_method,
                        calibration_cache_path=ranges_path)
    return dst


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime's calibrators print their progress and a pre-processing tip to stdout and the
    root logger; the pipeline prints its own one line per stage instead."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def quantize(fp32_path: str, out_dir: str, calibration: List[np.ndarray], method: str = "entropy",
             trt_version: str = "8.5.2", input_name: str = "input", cpu_reduce_range: bool = True) -> Dict[str, object]:
    """Calibrate `fp32_path` on `calibration` batches; write the three INT8 artifacts into `out_dir`."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if not calibration:
        raise EdgekitError("INT8 calibration needs at least one batch of real samples")
    ort_method = _ort_method(method)
    os.makedirs(out_dir, exist_ok=True)
    ranges_path = os.path.join(out_dir, layout.CALIB_RANGES)
    if os.path.exists(ranges_path):
        os.unlink(ranges_path)  # a fresh calibration: the cache is ours to rewrite
    paths = {"cpu": os.path.join(out_dir, layout.INT8_CPU), "qdq": os.path.join(out_dir, layout.INT8_QDQ),
             "cache": os.path.join(out_dir, layout.CALIB_CACHE), "ranges": ranges_path}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_cpu(fp32_path, paths["cpu"], calibration, method, ranges_path, input_name, cpu_reduce_range)
        with atomic_path(paths["qdq"]) as tmp, _quiet():
            quantize_static(fp32_path, tmp, None, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=["Conv"], calibrate_method=ort_method,
                            calibration_cache_path=ranges_path,
                            # Q/DQ on convolution inputs only: an output Q/DQ between a convolution and
                            # the Add it feeds blocks TensorRT's conv+add fusion; biases stay FP32
                            # (TensorRT 8.5 dequantizes int8 only, not the int32 biases ORT would write).
                            # Weights stay FP32 behind a Q->DQ pair, as TensorRT 8.x's developer guide asks
                            # (an INT8 initializer read by DequantizeLinear alone is ORT's layout, not 8.5's);
                            # the values are the same, so the model's top-1 is too.
                            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                           "QuantizeBias": False, "AddQDQPairToWeight": True,
                                           "OpTypesToExcludeOutputQuantization": ["Conv"]})
            model = onnx.load(tmp)
            ranges = calibration_ranges(ranges_path)
            residuals = add_residual_qdq(model, ranges)
            onnx.checker.check_model(model)
            onnx.save(model, tmp)
    fp32 = onnx.load(fp32_path)
    tensors = write_trt_calibration_cache(paths["cache"], ranges, _graph_tensors(fp32), trt_version)
    return {"paths": paths, "method": method, "calibration_samples": int(sum(b.shape[0] for b in calibration)),
            "residual_qdq_added": residuals, "calibrated_tensors": len(ranges), "cache_tensors": tensors}


def quantization_error(fp32_path: str, int8_path: str, images: np.ndarray,
                       input_name: str = "input", top: Optional[int] = None) -> List[Dict[str, object]]:
    """Per-layer error of INT8 vs FP32 activations on the same images, worst first.

    Compares every tensor produced by a Conv or Gemm node that exists in both models (Q/DQ keeps
    the FP32 model's tensor names for the layers' outputs): RMSE and SQNR in dB
    (10·log10(signal power / noise power)). The INT8 error accumulates through the network, so a
    layer's figure includes what earlier layers contributed.
    """
    import onnx
    import onnxruntime as ort

    fp32 = onnx.load(fp32_path)
    int8 = onnx.load(int8_path)
    layers = [(n.name or n.output[0], n.output[0], n.op_type) for n in fp32.graph.node if n.op_type in ("Conv", "Gemm")]
    produced = {o for n in int8.graph.node for o in n.output}
    layers = [item for item in layers if item[1] in produced]

    def run(model, names: List[str]) -> List[np.ndarray]:  # noqa: ANN001
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

    names = [item[1] for item in layers]
    reference, quantized = run(fp32, names), run(int8, names)
    report = []
    for (node, tensor, op), ref, got in zip(layers, reference, quantized):
        noise = float(np.mean((ref.astype(np.float64) - got) ** 2))
        signal = float(np.mean(ref.astype(np.float64) ** 2))
        sqnr = 10.0 * np.log10(signal / noise) if noise > 0 else float("inf")
        report.append({"node": node, "tensor": tensor, "op": op, "rmse": round(float(np.sqrt(noise)), 6),
                       "sqnr_db": round(float(sqnr), 3)})
    report.sort(key=lambda r: r["sqnr_db"])
    return report[:top] if top else report
