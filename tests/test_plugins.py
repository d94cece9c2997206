"""Plugins: a runner from a package outside edgekit, found through its entry point and run by `edgekit bench`;
every registry entry on an interpreter without torch, resolved or saying what to install; the recipe's
registered names checked before the first stage."""

import os
import re
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO, edgekit_cmd
from onnx_fixtures import linear_classifier

from edgekit.deploy.checks import PROBE, check_python, parse_facts, probe_modules
from edgekit.device.runtime import registry
from edgekit.errors import EdgekitError
from edgekit.targets import load_target

TORCH_FREE = os.path.join(REPO, "tests", "torch_free_site")

ECHO_RUNNER = '''
"""A runner outside edgekit: onnxruntime under another name, with a latency backend of its own."""
from edgekit.device.latency.backends import OnnxRuntimeCpuBackend
from edgekit.device.runtime.onnxrt import OnnxRuntimeRunner
from edgekit.device.runtime.registry import Need, RunnerEntry, Timer


class EchoRunner(OnnxRuntimeRunner):
    name = "echo"


class EchoBackend(OnnxRuntimeCpuBackend):
    name = "echo-cpu"


TIMER = Timer("echo-cpu", ("fp32",), EchoBackend, "onnxruntime, timed by the echo plugin")
ENTRY = RunnerEntry(
    "echo", lambda path, **options: EchoRunner(path, threads=options.get("threads")),
    placements={"cpu": ("fp32",)}, suffixes=(".onnx",),
    needs=(Need(("onnxruntime",), "{python} -m pip install onnxruntime"),
           Need(("echo_accelerator",), "{python} -m pip install echo-accelerator")),
    version=lambda: "0.1", timer=TIMER, description="the echo test runner")
'''

ENTRY_POINTS = """[edgekit.runners]
echo = echo_runner:ENTRY

[edgekit.latency_backends]
echo-cpu = echo_runner:TIMER
"""


def _plugin(folder):
    """echo_runner.py and the *.dist-info that pip would have written for it: a real entry point on sys.path."""
    folder.mkdir()
    (folder / "echo_runner.py").write_text(ECHO_RUNNER)
    info = folder / "echo_runner-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-runner\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return dict(os.environ, PYTHONPATH=str(folder))


def _probe(python_env, modules):
    """The [check] probe, run for real by an interpreter with `python_env`."""
    proc = subprocess.run([sys.executable, "-c", PROBE, *modules], capture_output=True, text=True, env=python_env,
                          timeout=120)
    return parse_facts(proc.stdout)


def test_a_runner_from_outside_the_package_is_one_entry_that_bench_check_and_the_recipe_read(tmp_path, monkeypatch):
    env = _plugin(tmp_path / "site")
    model = tmp_path / "tiny.fp32.onnx"
    linear_classifier(model)
    out = tmp_path / "r.json"
    proc = subprocess.run(edgekit_cmd("bench", str(model), "--runner", "echo", "--scenario", "single_stream",
                                      "--queries", "3", "--seconds", "0.05", "--warmup", "1", "--no-power",
                                      "--idle-seconds", "0", "--out", str(out)),
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "runner: echo (asked for)" in proc.stdout
    from edgekit.device.bench.results import load_result

    result = load_result(str(out))
    assert result["runtime"]["runner"] == "echo" and result["labels"]["placement"] == "cpu"
    # the same entry gives the recipe a latency backend, the registry a timer, and [check] what to probe
    script = textwrap.dedent("""
        import json, numpy, onnx
        from edgekit.device.runtime.registry import latency_backend
        from edgekit.deploy.checks import probe_modules
        from edgekit.device.runtime import registry
        from edgekit.recipe import recipe_from_dict
        recipe = recipe_from_dict({"prune": {"latency_backend": "echo-cpu"}})
        backend = latency_backend(recipe.prune.latency_backend, threads=1, min_runs=2, min_seconds=0.0, warmup=1)
        proto = onnx.load(%r)
        print(json.dumps({"names": registry.names(), "backends": registry.latency_backends(),
                          "ms": backend.time_model(proto, {"input": numpy.ones((1, 3, 8, 8), numpy.float32)}),
                          "backend": backend.name, "probe": probe_modules(["echo"])}))
    """ % str(model))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr
    import json

    seen = json.loads(proc.stdout)
    assert "echo" in seen["names"] and "echo-cpu" in seen["backends"]
    assert seen["backend"] == "echo-cpu" and seen["ms"] > 0
    assert seen["probe"] == ["numpy", "yaml", "onnxruntime", "echo_accelerator"]
    facts = _probe(env, seen["probe"])
    assert facts["py.mod.onnxruntime"].startswith("ok")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))  # here too: [check] runs on the host
    try:
        with pytest.raises(EdgekitError, match=re.escape(
                "has no echo_accelerator, which the echo runner needs: install it there: /opt/py -m pip install "
                "echo-accelerator")):
            check_python(load_target("cpu"), "me@box", facts, "/opt/py", ["echo"])
    finally:
        registry._RUNNERS.pop("echo", None)
        sys.modules.pop("echo_runner", None)


NO_TORCH_SCRIPT = textwrap.dedent("""
    import json
    from edgekit.device.runtime.registry import latency_backend
    from edgekit.device.runtime import registry
    from edgekit.errors import EdgekitError
    seen = {}
    for name in registry.names():
        try:
            seen["runner " + name] = "resolves: " + registry.get(name).description
        except EdgekitError as exc:
            seen["runner " + name] = str(exc)
    for name in registry.latency_backends():
        try:
            seen["backend " + name] = "resolves: " + registry.timer(name).description
        except EdgekitError as exc:
            seen["backend " + name] = str(exc)
    try:
        latency_backend("torch-cuda")
    except EdgekitError as exc:
        seen["get_backend torch-cuda"] = str(exc)
    seen["edgekit runners"] = registry.status_lines()
    import sys
    assert not [m for m in ("torch", "torchvision") if m in sys.modules]
    print(json.dumps(seen))
""")


def test_without_torch_every_registry_entry_resolves_or_says_in_one_line_what_to_install(tmp_path):
    import json

    env = dict(os.environ, PYTHONPATH=TORCH_FREE)
    proc = subprocess.run([sys.executable, "-c", NO_TORCH_SCRIPT], capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    listed = seen.pop("edgekit runners")
    assert {"runner onnxruntime", "runner tensorrt", "runner pytorch", "runner torch-tensorrt",
            "backend onnxruntime-cpu", "backend tensorrt", "backend torch-cuda"} <= set(seen)
    needs_torch = "needs torch, which is not installed in this interpreter: pip install 'edgekit[host]'"
    for key, said in seen.items():
        assert "\n" not in said and (said.startswith("resolves: ") or needs_torch in said), (key, said)
    assert seen["runner onnxruntime"].startswith("resolves") and seen["backend tensorrt"].startswith("resolves")
    for key in ("runner pytorch", "backend torch-cuda", "get_backend torch-cuda"):
        assert needs_torch in seen[key] and "unknown" not in seen[key] and "ModuleNotFoundError" not in seen[key]
    # `edgekit runners`: a line each, what it runs or what to install
    assert len(listed) == 7 and listed[0].startswith("runner onnxruntime: ONNX files")
    assert "runner 'torch-tensorrt' (edgekit.host.torch_runners:TORCH_TENSORRT) needs torch" in listed[3]
    assert listed[2].startswith("runner tensorrt: serialized TensorRT engines (.engine/.plan; gpu fp32/fp16/int8")
    # the CLI: one line, exit status 2, no traceback
    checkpoint = tmp_path / "resnet.pt"
    checkpoint.write_bytes(b"")
    proc = subprocess.run(edgekit_cmd("bench", str(checkpoint), "--runner", "pytorch", "--no-power"),
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and needs_torch in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    # [check] names the runner and what to install, from that interpreter's own answers
    facts = _probe(env, probe_modules(["pytorch"]))
    with pytest.raises(EdgekitError, match=re.escape("has no torch, which the pytorch runner needs: install it there: "
                                                     "/opt/py -m pip install 'edgekit[host]'")):
        check_python(load_target("cpu"), "me@box", facts, "/opt/py", ["pytorch"])


def test_a_precision_the_latency_backend_cannot_time_fails_before_the_teacher_trains(tmp_path):
    from edgekit.host.pipeline import run
    from edgekit.recipe import recipe_from_dict

    recipe = recipe_from_dict({"prune": {"target": "latency", "target_latency_ratio": 0.5,
                                         "latency_precision": "int8"}})
    out = tmp_path / "out"
    with pytest.raises(EdgekitError, match="recipe: prune.latency_precision is int8 but latency backend "
                                           "onnxruntime-cpu times fp32 only"):
        run(recipe, str(out), log=lambda m: None)
    assert not out.exists()
    with pytest.raises(EdgekitError, match="unknown latency backend 'nope'"):
        from edgekit.device.runtime.registry import latency_backend

        latency_backend("nope")
