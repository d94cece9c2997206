import numpy as np
import pytest
from onnx_fixtures import linear_classifier

from edgekit.device.runtime import OnnxRuntimeRunner
from edgekit.errors import EdgekitError
from edgekit.lazy import lazy_import


@pytest.fixture()
def tiny(tmp_path):
    path = tmp_path / "tiny.fp32.onnx"
    w, b = linear_classifier(path)
    return str(path), w, b


def test_onnxruntime_runner_matches_numpy(tiny):
    path, w, b = tiny
    x = np.random.RandomState(1).standard_normal((4, 3, 8, 8)).astype(np.float32)
    with OnnxRuntimeRunner(path, threads=1) as runner:
        assert [repr(s) for s in runner.input_specs()] == ["input: float32[?, 3, 8, 8]"]
        out = runner.infer({"input": x})
        assert runner.last_inference_time() > 0
        assert runner.last_compute_time() is None  # onnxruntime on the CPU: not separable
        info = runner.runtime_info()
    np.testing.assert_allclose(out["output"], x.reshape(4, -1) @ w + b, rtol=1e-4, atol=1e-4)
    assert info["runtime"] == "onnxruntime" and "CPUExecutionProvider" in info["providers"]
    assert not runner.is_active


def test_feed_is_checked_against_the_model(tiny):
    path, _, _ = tiny
    with OnnxRuntimeRunner(path) as runner:
        expects = r"input input has shape \[1, 3, 9, 9\], the model expects \[\?, 3, 8, 8\]"
        with pytest.raises(EdgekitError, match=expects):
            runner.infer({"input": np.zeros((1, 3, 9, 9), np.float32)})
        with pytest.raises(EdgekitError, match=r"input input has dtype float64, the model expects float32"):
            runner.infer({"input": np.zeros((1, 3, 8, 8))})
        with pytest.raises(EdgekitError, match=r"missing input; unknown images"):
            runner.infer({"images": np.zeros((1, 3, 8, 8), np.float32)})


def test_bad_model_files(tmp_path, tiny):
    path, _, _ = tiny
    with pytest.raises(EdgekitError, match="ONNX model not found"):
        OnnxRuntimeRunner(str(tmp_path / "none.onnx")).activate()
    cut = tmp_path / "cut.onnx"
    data = open(path, "rb").read()
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(EdgekitError, match=r"cut\.onnx is not a valid ONNX model for onnxruntime"):
        OnnxRuntimeRunner(str(cut)).activate()
    text = tmp_path / "notes.onnx"
    text.write_text("hello")
    with pytest.raises(EdgekitError, match="not a valid ONNX model"):
        OnnxRuntimeRunner(str(text)).activate()
    with pytest.raises(EdgekitError, match="has no TensorrtExecutionProvider"):
        OnnxRuntimeRunner(path, providers=["TensorrtExecutionProvider"]).activate()
    with pytest.raises(EdgekitError, match="is not active"):
        OnnxRuntimeRunner(path).infer({})


def test_missing_heavy_modules_say_what_to_install():
    with pytest.raises(EdgekitError, match=r"^tensorrt is not installed: on JetPack it comes with the system Python "
                                           r"\(sudo apt install python3-libnvinfer\); elsewhere run in the Jetson"):
        lazy_import("tensorrt")
    assert lazy_import("json").dumps([]) == "[]"
