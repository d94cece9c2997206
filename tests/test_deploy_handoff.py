"""A deploy target that asks for `harness: loadgen` and `handoff: [deepstream, triton]`: both harnesses measure
each job in one run, and the MLPerf logs and the packages come home beside the results."""

import glob
import json
import os
import sys

import pytest
import yaml

from edgekit.deploy import deploy, reach, transport_for
from edgekit.deploy.plan import jobs_document, plan_jobs
from edgekit.device.bench.results import load_result
from edgekit.targets import load_target

LOADGEN_MISSING = "MLPerf LoadGen is not installed here: pip install mlcommons-loadgen==6.0.17"


def target_file(tmp_path):
    path = tmp_path / "cpu-handoff.yaml"
    path.write_text(yaml.safe_dump({"name": "cpu", "precisions": ["int8"], "placements": ["cpu"], "batches": [1, 2],
                                    "harness": "loadgen", "handoff": ["deepstream", "triton"]}))
    return str(path)


def test_the_plan_runs_loadgen_before_the_bench_and_the_handoffs_after_it(tmp_path):
    target = load_target(target_file(tmp_path))
    (job,) = plan_jobs(target)
    steps = jobs_document(target, [job], "digits", "f", 0.1)["jobs"][0]["steps"]
    assert [s["argv"][:2] for s in steps] == [["bench", "model.int8.cpu.onnx"], ["bench", "model.int8.cpu.onnx"],
                                              ["handoff", "deepstream"], ["handoff", "triton"]]
    assert steps[0]["argv"][-2:] == ["--harness", "loadgen"] and "results/student.int8.cpu.loadgen.json" in steps[0][
        "argv"]
    assert "results/student.int8.cpu.json" in steps[1]["argv"] and "--harness" not in steps[1]["argv"]


def test_an_unknown_handoff_is_refused(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "handoff": ["tensorflow-serving"]}))
    with pytest.raises(Exception, match="handoff must list among deepstream, triton"):
        load_target(str(path))


@pytest.mark.slow
def test_a_loadgen_and_handoff_deploy_brings_both_results_the_logs_and_the_packages_home(tiny_run, tmp_path):
    pytest.importorskip("mlperf_loadgen", reason=LOADGEN_MISSING)
    out, summary, _ = tiny_run
    target_path = target_file(tmp_path)
    target = load_target(target_path)
    results = str(tmp_path / "results")
    lines = []
    reached = reach(target, transport_for(target, "digits", out, None), sys.executable, log=lines.append)
    deploy(out, target, target_path, reached, recipe="digits", results_root=results, seconds=0.1, log=lines.append)
    stored = {os.path.basename(p): load_result(p) for p in glob.glob(os.path.join(results, "cpu", "*.json"))}
    loadgen = [r for n, r in stored.items() if n.startswith("digits.student.int8.cpu.loadgen.")]
    edgekit = [r for n, r in stored.items() if n.startswith("digits.student.int8.cpu.2")]
    assert len(loadgen) == 1 and len(edgekit) == 1 and "harness" not in edgekit[0]
    section = loadgen[0]["loadgen"]
    assert section["validity"] in ("VALID", "INVALID") and os.path.isdir(section["logs"])
    assert section["logs"].startswith(os.path.join(results, "cpu"))  # pointed at its home, not the device's folder
    assert os.path.isfile(section["accuracy"]["offline"]["log"])
    assert section["accuracy"]["offline"]["top1"] == section["runner_top1"] == edgekit[0]["accuracy"]["device_check"][
        "top1"]
    package = os.path.join(results, "cpu", "handoff", "digits.student.int8.cpu")
    with open(os.path.join(package, "deepstream", "handoff.json")) as f:
        assert json.load(f)["normalisation"]["folded"] is False  # digits: one std, nvinfer's own scale fits
    assert os.path.isfile(os.path.join(package, "deepstream", "config_infer_primary.txt"))
    assert os.path.isfile(os.path.join(package, "triton", "digits_student_int8_cpu", "config.pbtxt"))
    assert any(line.startswith("[fetch] 3 hand-off package(s)") for line in lines)
    from edgekit.report.dashboard import page_data

    data = page_data(results)  # the log trees and packages beside the results are no results
    assert data["problems"] == [] and len(data["runs"]) == 6


def test_the_check_probes_loadgen_and_onnx_when_the_target_asks_and_names_the_install_command(tmp_path):
    from edgekit.deploy.checks import check_device, facts_script

    target = load_target(target_file(tmp_path))
    assert " numpy yaml onnxruntime mlperf_loadgen onnx 2>&1" in facts_script(target, "python3", {"onnxruntime"})
    assert "mlperf_loadgen" not in facts_script(load_target("cpu"), "python3", {"onnxruntime"})
    facts = {"free_kb": "9999999", "arch": "aarch64", "py.version": "3.8.10", "py.mod.numpy": "ok",
             "py.mod.yaml": "ok", "py.mod.onnxruntime": "ok 1.19.2", "py.mod.onnx": "ok 1.16.0",
             "py.mod.mlperf_loadgen": "missing ModuleNotFoundError: No module named 'mlperf_loadgen'"}
    with pytest.raises(Exception, match=r"has no mlperf_loadgen, which the loadgen harness needs: install it there: "
                                        r"sudo apt install build-essential "
                                        r"python3-dev && python3 -m pip install mlcommons-loadgen==6\.0\.17"):
        check_device(target, "nvidia@jetson", facts, "python3", ["onnxruntime"])
    check_device(target, "nvidia@jetson", dict(facts, **{"py.mod.mlperf_loadgen": "ok"}), "python3", ["onnxruntime"])


def test_gpu_and_dla_jobs_hand_off_their_measured_engines(tmp_path):
    path = tmp_path / "xavier-handoff.yaml"
    xavier = yaml.safe_load(open(os.path.join(os.path.dirname(__file__), "..", "edgekit", "presets", "targets",
                                              "xavier.yaml")))
    path.write_text(yaml.safe_dump(dict(xavier, precisions=["int8"], handoff=["deepstream", "triton"])))
    target = load_target(str(path))
    document = jobs_document(target, plan_jobs(target), "digits", "f", 1.0)
    steps = {job["stem"]: [s["argv"] for s in job["steps"] if s["stage"] == "handoff"] for job in document["jobs"]}
    deepstream, triton = steps["student.int8.dla1"]
    assert deepstream[2] == triton[2] == "engines/student.int8.dla1.b32.engine"  # DLA: the largest static batch
    assert deepstream[-1] == "--build" and triton[triton.index("--result") + 1] == "results/student.int8.dla1.json"
    deepstream, triton = steps["student.int8.gpu"]
    assert deepstream[2] == triton[2] == "engines/student.int8.gpu.engine"
