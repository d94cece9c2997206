"""`edgekit handoff`: the DeepStream config read back by GLib's own key-file parser and its preprocessing replayed
through onnxruntime; the Triton config read back by Triton's own protobuf (tritonclient's model_config_pb2)."""

import json
import os
import subprocess

import numpy as np
import pytest

from edgekit import summary as summaries
from edgekit.cli import main
from edgekit.errors import EdgekitError
from edgekit.handoff import deepstream as ds
from edgekit.handoff import triton as tr

SYSTEM_PYTHON = "/usr/bin/python3"
# GLib's GKeyFile (Debian's python3-gi, the system Python's), the parser nvinfer itself reads its config with
GLIB_PARSE = (
    "import json, sys\n"
    "import gi\n"
    "gi.require_version('GLib', '2.0')\n"
    "from gi.repository import GLib\n"
    "kf = GLib.KeyFile.new()\n"
    "kf.load_from_file(sys.argv[1], GLib.KeyFileFlags.NONE)\n"
    "keys, _ = kf.get_keys('property')\n"
    "print(json.dumps({'groups': kf.get_groups()[0], 'property': {k: kf.get_value('property', k) for k in keys},\n"
    "                  'scale': kf.get_double('property', 'net-scale-factor'),\n"
    "                  'offsets': list(kf.get_double_list('property', 'offsets'))}))\n"
)


def glib_parse(path):
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GLib', '2.0')"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("GLib's Python bindings are missing: apt-get install -y python3-gi gir1.2-glib-2.0")
    proc = subprocess.run([SYSTEM_PYTHON, "-c", GLIB_PARSE, str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def conv_classifier(path, seed=0, classes=5):
    """input[N,3,12,12] -> zero-padded 3x3 Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> logits."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.RandomState(seed)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    g = rng.standard_normal((classes, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("Gemm", ["f", "g"], ["logits"], transB=1)],
        "conv", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 12, 12])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(g, "g")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def logits(path, images):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images.astype(np.float32)})[0]


def artifacts(folder, mean, std, labels=("cat", "dog", "owl", "eel", "yak")):
    """A model, an eval set of normalised images from 8-bit pixels, and a summary with its contract."""
    conv_classifier(folder / "model.fp32.onnx")
    pixels = np.random.RandomState(3).randint(0, 256, size=(64, 3, 12, 12)).astype(np.float32)
    mean_, std_ = np.asarray(mean, np.float32).reshape(1, 3, 1, 1), np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    images = ((pixels / 255.0 - mean_) / std_).astype(np.float32)
    labels_ = logits(folder / "model.fp32.onnx", images).argmax(1)
    labels_[::4] = (labels_[::4] + 1) % 5  # top-1 75% on its own images
    np.savez(folder / "eval.npz", images=images, labels=labels_)
    contract = summaries.preprocessing({"size": [12, 12], "interpolation": "bilinear"}, None, mean, std, "RGB",
                                       list(labels))
    (folder / "summary.json").write_text(json.dumps({"schema": summaries.SCHEMA, "preprocessing": contract}))
    return pixels, images, labels_


@pytest.mark.parametrize("mean,std,folded", [((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), True),
                                             ((0.2, 0.2, 0.2), (0.3, 0.3, 0.3), False)])
def test_deepstream_config_parses_with_glib_and_its_preprocessing_reproduces_the_top1(tmp_path, mean, std, folded):
    pixels, images, labels = artifacts(tmp_path, mean, std)
    out = tmp_path / "deepstream"
    assert main(["handoff", "deepstream", str(tmp_path / "model.fp32.onnx"), "--summary",
                 str(tmp_path / "summary.json"), "--out", str(out)]) == 0
    parsed = glib_parse(out / ds.CONFIG_FILE)
    props = parsed["property"]
    assert parsed["groups"] == ["property"] and set(props) <= ds.NVINFER_PROPERTY_KEYS
    assert props["network-type"] == "1" and props["network-mode"] == "0" and props["enable-dla"] == "0"
    assert (out / props["labelfile-path"]).read_text() == "cat;dog;owl;eel;yak\n"
    # nvinfer's own preprocessing, y = net-scale-factor * (x - offsets[c]), with what GLib read from the config
    scale, offsets = parsed["scale"], np.asarray(parsed["offsets"], np.float32).reshape(1, 3, 1, 1)
    fed = (scale * (pixels - offsets)).astype(np.float32)
    reference = logits(tmp_path / "model.fp32.onnx", images).argmax(1)
    handed = logits(out / props["onnx-file"], fed)
    assert np.array_equal(handed.argmax(1), reference)  # every image: the model's own top-1 (75%), no less
    assert float((handed.argmax(1) == labels).mean()) == 0.75
    assert np.allclose(handed.sum(1), 1.0, atol=1e-5)  # probabilities: nvinfer's classifier parser labels every frame
    manifest = ds.read_manifest(str(out))
    assert manifest["normalisation"]["folded"] is folded
    if folded:  # the std is per channel: nvinfer passes raw pixels, the model takes them
        assert scale == 1.0 and parsed["offsets"] == [0.0, 0.0, 0.0]
    else:
        assert scale == pytest.approx(1 / (255 * 0.3)) and parsed["offsets"] == pytest.approx([51.0] * 3)


def test_one_scale_for_all_channels_would_cost_accuracy_where_the_std_differs(tmp_path):
    """Why the per-channel std is folded: nvinfer's single scale (the mean std) moves every logit."""
    pixels, images, _ = artifacts(tmp_path, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    approx = (pixels / 255.0 - np.asarray((0.485, 0.456, 0.406), np.float32).reshape(1, 3, 1, 1)) / 0.226
    exact = logits(tmp_path / "model.fp32.onnx", images)
    assert np.abs(logits(tmp_path / "model.fp32.onnx", approx) - exact).max() > 1e-3


def test_a_summary_without_the_contract_and_a_label_with_a_semicolon_are_refused(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"schema": summaries.SCHEMA}))
    with pytest.raises(EdgekitError, match="no preprocessing contract"):
        summaries.read_preprocessing(str(tmp_path / "summary.json"))
    with pytest.raises(EdgekitError, match="';'"):
        ds.labels_line(["a;b", "c"])
    with pytest.raises(ValueError, match="not nvinfer"):
        ds.config_text({"net-scale": 1.0}, "")


def triton_parse(path):
    from google.protobuf import text_format

    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                           reason="pip install 'tritonclient[grpc]==2.73.0'")
    with open(path) as f:
        return text_format.Parse(f.read(), model_config_pb2.ModelConfig())


def test_triton_repository_of_the_onnx_parses_with_tritons_protobuf(tmp_path):
    artifacts(tmp_path, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    result = tmp_path / "bench.json"
    assert main(["bench", str(tmp_path / "model.fp32.onnx"), "--batches", "1,2,4", "--seconds", "0.05", "--queries",
                 "5", "--warmup", "1", "--no-power", "--threads", "1", "--out", str(result)]) == 0
    repo = tmp_path / "repo"
    assert main(["handoff", "triton", str(tmp_path / "model.fp32.onnx"), "--summary", str(tmp_path / "summary.json"),
                 "--result", str(result), "--out", str(repo), "--name", "digits-student"]) == 0
    config = triton_parse(repo / "digits-student" / tr.CONFIG_FILE)
    assert config.name == "digits-student" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 4
    assert list(config.input[0].dims) == [3, 12, 12] and list(config.output[0].dims) == [5]
    assert config.input[0].name == "input" and config.output[0].name == "logits"
    sweep = json.loads(result.read_text())["scenarios"]["offline"]["rows"]
    best = max(r["throughput"] for r in sweep)
    assert list(config.dynamic_batching.preferred_batch_size) == sorted(
        r["batch"] for r in sweep if r["throughput"] >= 0.95 * best)
    assert (repo / "digits-student" / "1" / "model.onnx").read_bytes() == (tmp_path / "model.fp32.onnx").read_bytes()


def test_triton_engines_take_max_batch_from_the_profile_and_dla_ones_their_core(tmp_path):
    io = {"inputs": [tr.ModelIO("input", "float32", [None, 3, 32, 32])],
          "outputs": [tr.ModelIO("logits", "float32", [None, 10])]}
    engine = tmp_path / "student.int8.gpu.engine"
    engine.write_bytes(b"plan")
    gpu = {"profile": {"min": [1, 3, 32, 32], "opt": [8, 3, 32, 32], "max": [32, 3, 32, 32]}, "dla_core": None}
    dla = {"profile": {"min": [4, 3, 32, 32], "opt": [4, 3, 32, 32], "max": [4, 3, 32, 32]}, "dla_core": 1}
    result = {"scenarios": {"offline": {"rows": [{"batch": 8, "throughput": 99.0}, {"batch": 16, "throughput": 100.0},
                                                 {"batch": 64, "throughput": 140.0}]}}}
    tr.write(str(tmp_path / "repo"), "m_gpu", str(engine), io["inputs"], io["outputs"], gpu, result)
    config = triton_parse(tmp_path / "repo" / "m_gpu" / tr.CONFIG_FILE)
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 32
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16]  # 64 is beyond the profile
    assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU
    tr.write(str(tmp_path / "repo"), "m_dla1", str(engine), [tr.ModelIO("input", "float32", [4, 3, 32, 32])],
             [tr.ModelIO("logits", "float32", [4, 10])], dla, result)
    config = triton_parse(tmp_path / "repo" / "m_dla1" / tr.CONFIG_FILE)
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [4, 3, 32, 32]
    assert not config.HasField("dynamic_batching")
    secondary = config.instance_group[0].secondary_devices[0]
    assert secondary.kind == secondary.KIND_NVDLA and secondary.device_id == 1
    assert os.path.isfile(tmp_path / "repo" / "m_dla1" / "1" / "model.plan")


def test_the_digits_contract_is_what_the_data_pipeline_does():
    """The contract's resize, scale, mean and std, applied to scikit-learn's raw digits, give the val images."""
    import torch
    from sklearn.datasets import load_digits
    from torch.nn import functional as F

    from edgekit.host.data import load_digits_bundle
    from edgekit.recipe import DataConfig

    data = load_digits_bundle(DataConfig(image_size=16, max_val_samples=40), seed=0)
    contract = data.preprocessing
    assert contract["color_order"] == "GRAY" and contract["crop"] is None and contract["labels"] == list("0123456789")
    raw = torch.from_numpy(load_digits().images.astype(np.float32))[:, None]
    resized = F.interpolate(raw / contract["pixel_scale"], size=contract["resize"]["size"],
                            mode=contract["resize"]["interpolation"], align_corners=False).clamp(0, 1)
    mean, std = torch.tensor(contract["mean"]).view(1, 3, 1, 1), torch.tensor(contract["std"]).view(1, 3, 1, 1)
    expected = ((resized.repeat(1, 3, 1, 1) - mean) / std).flatten(1)
    val = torch.stack([data.val[i][0] for i in range(len(data.val))]).flatten(1)
    nearest = torch.cdist(val, expected).min(1).values
    assert float(nearest.max()) < 1e-4  # every val image is a raw digit put through the contract
