"""TensorRT 8.5's Q/DQ weight layout (issue 12, defect 7): FP32 weights behind Q->DQ pairs in
model.int8.qdq.onnx, the lint's rule for it, and unchanged outputs. Tiny and fast: a two-conv model
built with onnx.helper, quantized by the same `quantize` the pipeline calls."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.host.compress.quantize import calibration_ranges, quantize
from edgekit.host.compress.quantize.calibrate import write_ort_cache
from edgekit.trtlint import lint_model


def _two_convs(path):
    rng = np.random.RandomState(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal((5, 4, 1, 1)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
             helper.make_node("GlobalAveragePool", ["c2"], ["g"], name="pool"),
             helper.make_node("Flatten", ["g"], ["logits"], name="flatten")]
    graph = helper.make_graph(nodes, "two_convs", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                  ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    out = tmp_path_factory.mktemp("qdq")
    fp32 = str(out / "model.fp32.onnx")
    _two_convs(fp32)
    rng = np.random.RandomState(1)
    calibration = [rng.standard_normal((4, 3, 8, 8)).astype(np.float32) for _ in range(2)]
    info = quantize(fp32, str(out), calibration)
    return out, info, calibration


def test_weights_are_fp32_behind_a_qdq_pair(quantized):
    out, info, _ = quantized
    model = onnx.load(info["paths"]["qdq"])
    init = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 2
    for conv in convs:
        dq = producer[conv.input[1]]
        q = producer.get(dq.input[0])
        assert dq.op_type == "DequantizeLinear" and q is not None and q.op_type == "QuantizeLinear", conv.name
        assert init[q.input[0]].data_type == TensorProto.FLOAT  # the old flavour stored INT8 here
    assert lint_model(model) == []


def test_the_lint_flags_int8_weights_read_by_dequantize_alone(quantized):
    out, _, _ = quantized
    cpu = onnx.load(str(out / "model.int8.cpu.onnx"))  # onnxruntime's own layout: INT8 weights -> DQ
    assert "qdq-weight-pair" in {v.rule for v in lint_model(cpu)}


def test_outputs_and_top1_are_unchanged_by_the_pair(quantized, tmp_path):
    out, info, calibration = quantized
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    # the old flavour (INT8 weight initializers) with the very same ranges
    old = str(tmp_path / "old.qdq.onnx")
    cache = str(tmp_path / "ort.ranges.json")
    write_ort_cache(cache, calibration_ranges(info["paths"]["ranges"]))
    quantize_static(str(out / "model.fp32.onnx"), old, None, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"],
                    calibration_cache_path=cache, calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                                   "OpTypesToExcludeOutputQuantization": ["Conv"]})
    x = np.concatenate(calibration)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    run = [ort.InferenceSession(p, options, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
           for p in (old, info["paths"]["qdq"])]
    np.testing.assert_allclose(run[1], run[0], rtol=1e-5, atol=1e-5)
    assert (run[1].argmax(1) == run[0].argmax(1)).all()
