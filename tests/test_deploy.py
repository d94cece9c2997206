"""The deploy package without a device: job planning, the bundle's calibration cache, the device checks
(fed fake probe outputs) and the commands run on the device. The real-sshd tests are in test_remote.py."""

import os
import re
import shlex

import pytest

from edgekit.deploy.bundle import build_bundle, bundle_fingerprint
from edgekit.deploy.checks import check_device, facts_script, parse_facts, probe_modules
from edgekit.deploy.flow import device_command, device_python, docker_command, store_fetched
from edgekit.deploy.plan import jobs_document, plan_jobs, runners_needed
from edgekit.deploy.transport import Ssh
from edgekit.device import layout
from edgekit.device.bench.environment import parse_l4t_release as l4t_release
from edgekit.device.engine.calibcache import read_calibration_cache, write_calibration_cache
from edgekit.errors import EdgekitError
from edgekit.targets import Target, load_target


def _steps(doc):
    return {job["stem"]: [s["argv"] for s in job["steps"]] for job in doc["jobs"]}


def test_what_each_target_measures():
    jobs = {j.stem: j for j in plan_jobs(load_target("xavier"), ["teacher", "round1"])}
    assert sorted(jobs) == ["round1.fp16.gpu", "student.fp16.dla0", "student.fp16.dla1", "student.fp16.gpu",
                            "student.int8.dla0", "student.int8.dla1", "student.int8.gpu", "teacher.fp16.gpu"]
    assert jobs["student.int8.gpu"].source == layout.INT8_QDQ  # explicit Q/DQ on the GPU
    assert jobs["student.int8.dla0"].source == layout.INT8_FP32  # implicit INT8 + calib.cache on DLA
    assert jobs["student.int8.dla0"].accuracy_from == layout.INT8_QDQ
    assert jobs["teacher.fp16.gpu"].source == "variants/teacher.fp32.onnx"
    cpu = [j.stem for j in plan_jobs(load_target("cpu"), ["teacher"])]
    assert cpu == ["student.fp32.cpu", "student.fp16.cpu", "student.int8.cpu", "teacher.fp32.cpu"]
    assert runners_needed(plan_jobs(load_target("cpu"))) == {"onnxruntime"}
    assert runners_needed(plan_jobs(load_target("xavier"))) == {"tensorrt"}


def test_dla_jobs_build_one_static_engine_per_batch_and_gpu_jobs_one_dynamic_engine():
    xavier = load_target("xavier")
    steps = _steps(jobs_document(xavier, plan_jobs(xavier), "digits", "fp", 0.5, power_total_flag=True))
    dla = steps["student.int8.dla1"]
    builds, bench = dla[:-1], dla[-1]
    assert [b[b.index("--batch") + 1] for b in builds] == ["1", "2", "4", "8", "16", "32"]
    for build in builds:
        batch = int(build[build.index("--batch") + 1])
        # the FP32 graph the INT8 files quantize (the QAT weights when qat ran), not the exported FP32 student
        assert build[:4] == ["build-engine", "model.int8.fp32.onnx", "--precision", "int8"]
        assert build[build.index("--out") + 1] == layout.engine_path("student.int8.dla1", batch)
        assert build[build.index("--dla") + 1] == "1" and build[build.index("--calib") + 1] == "calib.cache"
        assert build[build.index("--layer-precisions") + 1] == layout.LAYER_PRECISIONS  # the fallback's kept layers
        assert "--max-batch" not in build  # min = opt = max: a dynamic profile would put DLA layers on the GPU
    assert bench[:2] == ["bench", "engines/student.int8.dla1.b{batch}.engine"]
    assert "--calib" not in " ".join(sum(steps["student.fp16.dla0"], []))  # FP16 on DLA needs no cache
    gpu = steps["student.int8.gpu"]
    assert gpu[0] == ["build-engine", "model.int8.qdq.onnx", "--precision", "int8", "--out",
                      "engines/student.int8.gpu.engine", "--timing-cache", "timing.cache", "--opt-batch", "32",
                      "--max-batch", "32"]  # opt = the batch measured most, not batch 1
    assert gpu[1][:2] == ["bench", "engines/student.int8.gpu.engine"]
    assert gpu[1][gpu[1].index("--accuracy-from") + 1] == "model.int8.qdq.onnx"
    cpu = _steps(jobs_document(load_target("cpu"), plan_jobs(load_target("cpu")), "digits", "fp", 0.5, False))
    assert [s[0] for s in cpu["student.int8.cpu"]] == ["bench"]  # onnxruntime: nothing to build


@pytest.mark.parametrize("name, rule", [("xavier", "GPU+CPU+SOC+CV+VDDRQ+SYS5V"),
                                        ("orin", "VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0"), ("cpu", "sum"),
                                        ("x86-gpu", "sum")])
def test_every_bench_step_gets_the_targets_power_total_rule(name, rule):
    target = load_target(name)
    assert target.power_total_rule() == rule
    doc = jobs_document(target, plan_jobs(target, ["teacher"]), "digits", "fp", 0.5, power_total_flag=True)
    benches = [argv for job in doc["jobs"] for s in job["steps"] for argv in [s["argv"]] if argv[0] == "bench"]
    assert benches and all(b[-2:] == ["--power-total", rule] for b in benches)
    # and this edgekit's bench takes it (the device runs the same edgekit's wheel)
    from edgekit.cli import build_parser

    assert build_parser().parse_args(["bench", "m.onnx", "--power-total", rule]).power_total == rule


def test_power_total_and_python_bin_are_validated():
    with pytest.raises(EdgekitError, match="power_total must be sum or one rail's name"):
        Target(power_total="VDD IN").validate()
    with pytest.raises(EdgekitError, match="python_bin must be"):
        Target(python_bin="-c").validate()
    assert device_python(Target(python_bin="/opt/venv/bin/python"), "me@host", None) == "/opt/venv/bin/python"
    assert device_python(Target(python_bin="/opt/venv/bin/python"), "me@host", "/x/py") == "/x/py"
    assert device_python(Target(), "me@host", None) == "python3"


def _artifacts(folder, trt="8.5.2"):
    for path in [m.path for m in layout.MODELS] + [layout.INT8_FP32]:
        (folder / path).write_bytes(path.encode())
    (folder / "variants").mkdir()
    (folder / "variants" / "teacher.fp32.onnx").write_bytes(b"teacher")
    (folder / layout.SUMMARY).write_text("{}")
    (folder / layout.EVAL_SET).write_bytes(b"npz")
    write_calibration_cache(str(folder / layout.CALIB_CACHE), {"input": 0.5, "conv1": 0.25}, trt)
    (folder / layout.LAYER_PRECISIONS).write_text('{"schema": "edgekit.layer_precisions/1", "precisions": {}}')
    (folder / "target.yaml").write_text("name: x\n")


@pytest.mark.parametrize("name, header", [("xavier", "TRT-8502-EntropyCalibration2"),
                                          ("orin", "TRT-100300-EntropyCalibration2"),
                                          ("x86-gpu", "TRT-100300-EntropyCalibration2")])
def test_each_targets_bundle_carries_a_calibration_cache_with_its_own_tensorrt_header(tmp_path, name, header):
    _artifacts(tmp_path, trt="8.6.1")
    bundle = tmp_path / "bundle"
    files = build_bundle(str(tmp_path), load_target(name), str(tmp_path / "target.yaml"), str(bundle), ["teacher"],
                         wheel=False, log=lambda m: None)
    assert layout.CALIB_CACHE in files and "variants/teacher.fp32.onnx" in files
    found, scales = read_calibration_cache(str(bundle / layout.CALIB_CACHE))
    assert found == header and scales == {"input": 0.5, "conv1": 0.25}
    # the artifacts folder's own cache is untouched (the bundle's was a hard link before re-tagging)
    assert read_calibration_cache(str(tmp_path / layout.CALIB_CACHE))[0] == "TRT-8601-EntropyCalibration2"


def test_a_target_without_tensorrt_ships_the_cache_unchanged_and_models_as_hard_links(tmp_path):
    _artifacts(tmp_path)
    bundle = tmp_path / "bundle"
    files = build_bundle(str(tmp_path), load_target("cpu"), str(tmp_path / "target.yaml"), str(bundle),
                         wheel=False, log=lambda m: None)
    assert os.path.samefile(str(bundle / layout.CALIB_CACHE), str(tmp_path / layout.CALIB_CACHE))
    assert os.path.samefile(str(bundle / layout.FP32), str(tmp_path / layout.FP32))
    first = bundle_fingerprint(str(bundle), files, 1.0)
    (bundle / layout.SUMMARY).write_text('{"rewritten": true}')  # timestamps only: the fingerprint holds
    assert bundle_fingerprint(str(bundle), files, 1.0) == first != bundle_fingerprint(str(bundle), files, 2.0)


XAVIER_FACTS = """arch=aarch64
free_kb=20971520
l4t=# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Fri Jul 21 2023
nvpmodel=NV Power Mode: MAXN 0
sha256sum=yes
docker={"io.containerd.runc.v2":{},"nvidia":{"path":"nvidia-container-runtime"}}
image=yes
py.version=3.8.10
py.mod.numpy=ok 1.24.4
py.mod.yaml=ok 6.0
py.mod.tensorrt=ok 8.5.2.2
py.mod.pycuda.driver=ok 2022.2
py.mod.cuda.bindings.runtime=missing ModuleNotFoundError: No module named 'cuda'
py.mod.cuda.cudart=missing ModuleNotFoundError: No module named 'cuda'
"""


def _facts(**change):
    facts = parse_facts(XAVIER_FACTS)
    facts.update(change)
    return {k: v for k, v in facts.items() if v is not None}


@pytest.mark.parametrize("change, message", [
    ({"docker": "none"}, "has no Docker; install docker and the nvidia container runtime"),
    ({"docker": "permission denied while trying to connect"}, "may not use Docker; add it to the docker group"),
    ({"docker": "down: null Cannot connect to the Docker daemon"}, "does not answer (Cannot connect to the Docker"),
    ({"docker": '{"runc":{}}'}, "Docker has no nvidia runtime; install nvidia-container-toolkit"),
    ({"image": "no"}, "has no image edgekit/jetson:r35.4.1; build it there first: make docker-jetson"),
    # the full L4T release, not only the major
    ({"l4t": "# R35 (release), REVISION: 3.1, GCID: 32827747"}, "runs R35.3.1 but target xavier is for L4T R35.4.1"),
    ({"l4t": None}, "runs no L4T but target xavier"),
    ({"free_kb": "102400"}, "has 100 MiB free in its home folder"),
    ({"free_kb": ""}, "could not read the free disk space on nvidia@xavier (df printed '')"),
    ({"free_kb": None}, "could not read the free disk space"),
    ({"arch": "x86_64"}, "target xavier is aarch64 but nvidia@xavier is x86_64"),
    ({"py.version": "3.10.12"}, "Python (python3 in edgekit/jetson:r35.4.1) is 3.10.12 but target xavier is for "
                                "Python 3.8"),
    ({"py.version": "3.6.9"}, "is 3.6.9; edgekit needs Python >= 3.8"),
    ({"py.version": None, "py.status": "127", "py.output": "/bin/sh: 1: python3: not found"},
     "Python (python3 in edgekit/jetson:r35.4.1) did not run: /bin/sh: 1: python3: not found"),
    ({"py.mod.numpy": "missing ModuleNotFoundError: No module named 'numpy'"},
     "has no numpy: install it there: python3 -m pip install numpy"),
    ({"py.mod.tensorrt": "missing ModuleNotFoundError: No module named 'tensorrt'"},
     "has no tensorrt, which the tensorrt runner needs: install it there: on JetPack it comes with the system "
     "Python (sudo apt install python3-libnvinfer)"),
    ({"py.mod.tensorrt": "missing ImportError: libnvinfer.so.8: cannot open shared object file"},
     "has no tensorrt (ImportError: libnvinfer.so.8: cannot open shared object file)"),
    ({"py.mod.pycuda.driver": "missing ModuleNotFoundError: No module named 'pycuda'"},
     "has no pycuda or cuda-python, which the tensorrt runner needs: install it there: python3 -m pip install "
     "pycuda"),
    ({"py.mod.tensorrt": "ok 8.6.2.3"}, "has TensorRT 8.6.2.3 but target xavier is for TensorRT 8.5.2"),
])
def test_device_checks_refuse_with_the_reason(change, message):
    xavier = load_target("xavier")
    check_device(xavier, "nvidia@xavier", _facts(), "python3", ["tensorrt"])  # a ready Xavier passes
    with pytest.raises(EdgekitError, match=re.escape(message)):
        check_device(xavier, "nvidia@xavier", _facts(**change), "python3", ["tensorrt"])


def test_cpu_jobs_need_onnxruntime_and_say_how_to_install_it():
    cpu = load_target("cpu")
    facts = _facts(**{"py.mod.onnxruntime": "missing ModuleNotFoundError: No module named 'onnxruntime'"})
    with pytest.raises(EdgekitError, match=re.escape(
            "me@host's Python (/opt/py/bin/python3) has no onnxruntime, which the onnxruntime runner needs: install "
            "it there: /opt/py/bin/python3 -m pip install onnxruntime (or point --device-python / python_bin at an "
            "interpreter that has it)")):
        check_device(cpu, "me@host", facts, "/opt/py/bin/python3", ["onnxruntime"])
    check_device(cpu, "me@host", _facts(**{"py.mod.onnxruntime": "ok 1.23.0"}), "python3", ["onnxruntime"])
    # the cpu target names no L4T, TensorRT or Python: a laptop without them passes
    check_device(cpu, "me@host", _facts(l4t=None, **{"py.mod.onnxruntime": "ok 1.23.0", "py.version": "3.12.1"}),
                 "python3", ["onnxruntime"])


def test_the_probe_is_one_quoted_command_that_asks_only_for_what_the_jobs_need():
    assert probe_modules({"onnxruntime"}) == ["numpy", "yaml", "onnxruntime"]
    assert "tensorrt" in probe_modules({"tensorrt"}) and "pycuda.driver" in probe_modules({"tensorrt"})
    native = facts_script(load_target("cpu"), "/opt/my py/python3", {"onnxruntime"})
    assert "'/opt/my py/python3' -c " in native and " numpy yaml onnxruntime 2>&1 || echo py.status=$?" in native
    docker = facts_script(load_target("xavier"), "python3", {"tensorrt"})
    assert "docker run --rm --runtime nvidia --entrypoint python3 edgekit/jetson:r35.4.1 -c" in docker
    assert l4t_release("# R36 (release), REVISION: 4.0, GCID: 37537400") == "R36.4.0"
    assert l4t_release("") is None


def test_device_commands_quote_everything():
    command = device_command("/opt/my venv/bin/python", "edgekit-0-py3-none-any.whl")
    assert command.startswith("rm -rf lib && '/opt/my venv/bin/python' -c ")
    assert command.endswith("edgekit-0-py3-none-any.whl lib && PYTHONPATH=lib '/opt/my venv/bin/python' -m "
                            "edgekit.cli run-jobs jobs.json")
    assert device_command("python3", None) == "python3 -m edgekit.cli run-jobs jobs.json"
    xavier = load_target("xavier")
    inner = device_command("python3", "edgekit-0-py3-none-any.whl")
    wrapped = docker_command(xavier, "edgekit-deploy/digits", inner)
    remove, run = wrapped.split(" && ", 1)
    # a container left measuring by a dropped connection is removed before the new one starts
    assert remove == "{ docker rm -f edgekit-digits >/dev/null 2>&1 || true; }"
    words = shlex.split(run)
    assert words[:7] == ["docker", "run", "--rm", "--name", "edgekit-digits", "--runtime", "nvidia"]
    assert words[words.index("--entrypoint") + 1:words.index("--entrypoint") + 4] == [
        "/bin/sh", "edgekit/jetson:r35.4.1", "-c"]
    assert words[-1] == inner
    ssh = Ssh("nvidia@xavier.local", "edgekit-deploy/my recipe; rm -rf ~", 2222)
    assert ssh.ssh("true")[-2:] == ["nvidia@xavier.local", "true"] and "-p" in ssh.ssh("true")
    with pytest.raises(Exception, match="DEVICE must look like user@host"):
        Ssh("-oProxyCommand=evil", "x")


def test_fetched_files_are_stored_under_the_recipes_name_and_errors_beside_them(tmp_path):
    import json

    staging, destination = tmp_path / "in", tmp_path / "cpu"
    staging.mkdir()
    error = {"schema": "edgekit.job-error", "schema_version": 1, "run_id": "20260101-000000-abcdef",
             "created": "2026-01-01T00:00:00+00:00", "stem": "student.fp16.cpu", "stage": "bench",
             "message": "model.fp16.onnx is not a valid ONNX model", "labels": {}, "command": [], "exit_code": 2}
    (staging / "student.fp16.cpu.error.json").write_text(json.dumps(error))
    (staging / "junk.json").write_text("{")
    lines = []
    results, errors = store_fetched(str(staging), str(destination), "my.recipe", {}, lines.append)
    assert results == [] and [e["stem"] for e in errors] == ["student.fp16.cpu"]
    stored = os.listdir(str(destination))
    assert stored == ["my.recipe.student.fp16.cpu.20260101-000000-abcdef.error.json"]
    assert layout.parse_result_name(stored[0]).recipe == "my.recipe" and layout.parse_result_name(stored[0]).error
    assert any(line.startswith("[fetch] skipped junk.json") for line in lines)
