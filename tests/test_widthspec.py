"""The width-spec format and the entry-point reader, both torch-free (the device side reads them)."""

import copy
import subprocess
import sys

import pytest
from conftest import REPO

from edgekit.errors import EdgekitError
from edgekit.plugins import entry_points
from edgekit.widthspec import FORMAT, check_width_spec, is_depthwise, is_legacy, modules_of, stage_widths

SPEC = {"format": FORMAT, "arch": "tiny", "modules": {
    "stem": {"type": "conv", "in": 3, "out": 16, "groups": 1, "kernel": [3, 3], "stride": [2, 2],
             "padding": [1, 1], "dilation": [1, 1]},
    "stem_bn": {"type": "norm", "features": 16},
    "dw": {"type": "conv", "in": 16, "out": 16, "groups": 16, "kernel": [3, 3], "stride": [1, 1],
           "padding": [1, 1], "dilation": [1, 1]},
    "fc": {"type": "linear", "in": 16, "out": 10}}}


def test_a_well_formed_spec_passes_and_reads_by_type():
    assert check_width_spec(copy.deepcopy(SPEC)) == SPEC
    assert list(modules_of(SPEC, "conv")) == ["stem", "dw"]
    assert is_depthwise(SPEC["modules"]["dw"]) and not is_depthwise(SPEC["modules"]["stem"])
    assert stage_widths(SPEC) == [16, 16]
    assert not is_legacy(SPEC) and is_legacy({"arch": "resnet50", "stem": 64, "stages": []})


@pytest.mark.parametrize("path, value, message", [
    (("format",), "edgekit.width-spec/1", r"expected a mapping with format 'edgekit.width-spec/2'"),
    (("modules",), {}, r"'modules' must be a non-empty mapping"),
    (("modules", "dw", "groups"), 3, r"modules\['dw'\]\.groups \(3\) must divide in \(16\) and out \(16\)"),
    (("modules", "stem", "out"), 0, r"modules\['stem'\]\.out must be a positive integer, got 0"),
    (("modules", "stem", "out"), True, r"modules\['stem'\]\.out must be a positive integer, got True"),
    (("modules", "stem", "kernel"), [3], r"modules\['stem'\]\.kernel must be a pair of integers of at least 1"),
    (("modules", "stem", "padding"), [-1, 0], r"modules\[.stem.\]\.padding must be a pair of integers of at least 0"),
    (("modules", "fc", "groups"), 1, r"modules\['fc'\] has unknown key 'groups' \(a linear takes in, out\)"),
    (("modules", "stem_bn", "type"), "layernorm", r"modules\['stem_bn'\] must be a mapping with type conv"),
])
def test_a_malformed_spec_says_what_is_wrong(path, value, message):
    spec = copy.deepcopy(SPEC)
    node = spec
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(EdgekitError, match="^malformed width spec: " + message):
        check_width_spec(spec)


def _write_distribution(folder, name, group, entries):
    info = folder / "{}-0.1.dist-info".format(name)
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: {}\nVersion: 0.1\n".format(name))
    (info / "entry_points.txt").write_text("[{}]\n".format(group) + "".join(
        "{} = {}\n".format(k, v) for k, v in entries.items()))


def test_entry_points_of_a_group_by_name(tmp_path, monkeypatch):
    _write_distribution(tmp_path, "edgekit_probe", "edgekit.probe-group",
                        {"one": "probe_mod:ONE", "two": "probe_mod:TWO"})
    monkeypatch.syspath_prepend(str(tmp_path))
    found = entry_points("edgekit.probe-group")
    assert sorted(found) == ["one", "two"] and found["two"].value == "probe_mod:TWO"
    assert entry_points("edgekit.no-such-group") == {}


def test_the_reader_runs_without_torch(tmp_path):
    """On the device: no torch, and (on Python 3.8/3.9) the dict-of-groups interface."""
    _write_distribution(tmp_path, "edgekit_probe", "edgekit.probe-group", {"one": "probe_mod:ONE"})
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "from edgekit.plugins import entry_points\n"
            "import edgekit.widthspec\n"
            "assert list(entry_points('edgekit.probe-group')) == ['one']\n"
            "assert 'torch' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, cwd=REPO)
