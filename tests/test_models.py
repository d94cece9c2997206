import os

import pytest
import torch
import torchvision

from edgekit.errors import EdgekitError
from edgekit.host.arch import count_macs_params, load_student, save_student
from edgekit.host.arch.resnet import RESNET50, check_stage_spec, from_stage_spec, stage_spec
from edgekit.host.models import resnet50
from edgekit.widthspec import FORMAT

load_resnet50_checkpoint = RESNET50.load_checkpoint


def test_torchvision_resnet50_counts_4_1_gmacs_and_25_6_m_params():
    macs, params = count_macs_params(resnet50(num_classes=1000), 224)
    assert 4.05e9 < macs < 4.15e9  # the published 4.1 GMACs (8.2 GFLOPs)
    assert params == 25_557_032


def test_dense_stage_spec_matches_the_paper():
    spec = stage_spec(resnet50())
    assert spec["stem"] == 64
    assert [s["out"] for s in spec["stages"]] == [256, 512, 1024, 2048]
    assert [len(s["blocks"]) for s in spec["stages"]] == [3, 4, 6, 3]
    assert spec["stages"][2]["blocks"][0] == [256, 256]


def _odd_spec():
    spec = stage_spec(resnet50())
    spec["stem"] = 24
    spec["stages"][0]["out"] = 120
    spec["stages"][1]["blocks"][2] = [40, 56]
    spec["stages"][3]["out"] = 1000
    return spec


def test_width_spec_round_trips_through_a_model_and_a_file(tmp_path):
    spec = _odd_spec()
    model = from_stage_spec(spec, num_classes=7).eval()
    assert stage_spec(model) == spec
    x = torch.randn(2, 3, 32, 32)
    path = str(tmp_path / "m.pt")
    save_student(path, model, RESNET50)
    # a plain dict of tensors and numbers: loads with weights_only=True
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "edgekit.model/2" and raw["num_classes"] == 7
    assert raw["width_spec"]["format"] == FORMAT and raw["width_spec"]["modules"]["layer2.2.conv1"]["out"] == 40
    loaded, info = load_student(path)
    assert info["width_spec"] == raw["width_spec"] and stage_spec(loaded) == spec
    with torch.no_grad():
        assert torch.equal(model(x), loaded.eval()(x))
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_a_file_of_the_first_format_still_loads(tmp_path):
    """edgekit.model/1 files (teacher.pt, student.pt of earlier runs) hold ResNet-50's stage spec."""
    spec = _odd_spec()
    model = from_stage_spec(spec, num_classes=7).eval()
    path = str(tmp_path / "old.pt")
    torch.save({"format": "edgekit.model/1", "arch": "resnet50", "num_classes": 7, "width_spec": spec,
                "state_dict": model.state_dict(), "meta": {"role": "student"}}, path)
    loaded, info = load_student(path)
    assert info["arch"] == "resnet50" and info["meta"] == {"role": "student"}
    assert info["width_spec"] == RESNET50.width_spec(model)  # read back in the current format
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded.eval()(x))


def test_width_spec_checker_rejects_broken_residual_coupling():
    model = resnet50()
    block = model.layer1[1]
    block.conv3 = torch.nn.Conv2d(64, 128, 1, bias=False)  # no longer matches the 256-wide residual
    block.bn3 = torch.nn.BatchNorm2d(128)
    with pytest.raises(ValueError, match=r"layer1\.1 adds a 256-channel identity to a 128-channel output"):
        stage_spec(model)
    with pytest.raises(ValueError, match=r"layer1\.1 adds a 256-channel identity"):
        RESNET50.width_spec(model)  # saving checks the coupling too
    with pytest.raises(EdgekitError, match="needs 4 blocks"):
        bad = _odd_spec()
        bad["stages"][1]["blocks"].pop()
        check_stage_spec(bad)


# ---- checkpoint loading

@pytest.fixture(scope="module")
def dense_state():
    torch.manual_seed(0)
    return resnet50(num_classes=1000).state_dict()


def test_loads_state_dict_nested_dict_and_ddp_prefix(tmp_path, dense_state):
    plain = tmp_path / "plain.pth"
    torch.save(dense_state, plain)
    nested = tmp_path / "nested.pth"
    torch.save({"epoch": 90, "state_dict": {"module." + k: v for k, v in dense_state.items()}}, nested)
    a, info = load_resnet50_checkpoint(str(plain))
    b, _ = load_resnet50_checkpoint(str(nested))
    assert info["num_classes"] == 1000 and not info["head_replaced"]
    for key in ("layer3.2.conv2.weight", "fc.bias"):
        assert torch.equal(a.state_dict()[key], dense_state[key])
        assert torch.equal(b.state_dict()[key], dense_state[key])


def test_other_num_classes_replaces_the_head_and_says_so(tmp_path, dense_state):
    path = tmp_path / "r50.pth"
    torch.save(dense_state, path)
    messages = []
    model, info = load_resnet50_checkpoint(str(path), num_classes=10, log=messages.append)
    assert info["head_replaced"] and model.fc.out_features == 10
    assert "1000-class head" in messages[0] and "10 classes" in messages[0]
    assert torch.equal(model.state_dict()["conv1.weight"], dense_state["conv1.weight"])


def test_missing_and_truncated_checkpoints(tmp_path, dense_state):
    with pytest.raises(EdgekitError, match="checkpoint not found"):
        load_resnet50_checkpoint(str(tmp_path / "nope.pth"))
    whole = tmp_path / "whole.pth"
    torch.save(dense_state, whole)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(EdgekitError, match="truncated or not a PyTorch file"):
        load_resnet50_checkpoint(str(cut))
    # text that the unpickler reads as opcodes: once "(pop from empty list)", now what the file is
    for words in ("not a checkpoint", "a0", "j checkpoint"):
        text = tmp_path / "notes.pth"
        text.write_text(words)
        with pytest.raises(EdgekitError, match=r"^checkpoint \S+notes.pth is not a PyTorch file \(it is text, "
                                               r"starting '{}'\); give one written by torch.save".format(words)):
            load_resnet50_checkpoint(str(text))
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(EdgekitError, match=r"is not a PyTorch file \(it is empty\)"):
        load_resnet50_checkpoint(str(empty))


def test_checkpoint_of_another_architecture(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(EdgekitError, match=r"not a torchvision ResNet-50: .*keys missing"):
        load_resnet50_checkpoint(str(path))
    wide = tmp_path / "wide.pth"
    torch.save(torchvision.models.wide_resnet50_2().state_dict(), wide)
    with pytest.raises(EdgekitError, match=r"not a dense ResNet-50: layer1\.0\.conv1\.weight has shape"):
        load_resnet50_checkpoint(str(wide))
    holder = tmp_path / "holder.pth"
    torch.save({"epoch": 3, "lr": 0.1}, holder)
    with pytest.raises(EdgekitError, match="holds no state_dict"):
        load_resnet50_checkpoint(str(holder))


class _RunsCode:
    """Unpickling this runs a shell command: exactly what weights_only must refuse."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, ("touch " + self.marker,))


def test_a_pickle_that_would_run_code_is_refused(tmp_path, dense_state):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": dense_state, "payload": _RunsCode(str(marker))}, path)
    with pytest.raises(EdgekitError, match="pickled Python objects that could run code"):
        load_resnet50_checkpoint(str(path))
    assert not marker.exists()
