"""What a target's `harness:` and `handoff:` keys add to a deploy: the jobs' extra steps, the modules the
`[check]` probe asks for, and the log trees and packages fetched home beside the results.

- `harness: loadgen`: each job first runs `edgekit bench --harness loadgen` into results/<stem>.loadgen.json
  (its MLPerf logs in results/<stem>.loadgen.mlperf/), then edgekit's own bench, whose result marks the job
  done: both come home, side by side, from one run.
- `handoff: [deepstream, triton]`: after the bench, the measured model (the engine on GPU/DLA, the ONNX on
  the CPU) is packaged into handoff/<stem>/<kind>/; the DeepStream model's engine is built there with the
  measured engine's settings. Home they land in <results>/<target>/handoff/<recipe>.<stem>/<kind>/.
"""

import os
import shutil
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..device import layout
from ..device.runtime.registry import Need
from ..targets import Target

# What each key needs on the device, and how to get it there (the [check] names it when missing).
# LoadGen 6.0.17 has no aarch64 or cp38 wheel: pip builds the sdist there (a C++ compiler, Python headers).
NEEDS = {"loadgen": ("the loadgen harness", Need(("mlperf_loadgen",), "sudo apt install build-essential python3-dev "
                                                 "&& {python} -m pip install mlcommons-loadgen==6.0.17")),
         "deepstream": ("the deepstream hand-off", Need(("onnx",), "{python} -m pip install onnx"))}


def device_needs(target: Target) -> List[Tuple[str, Need]]:
    """(who, the need) for the extra modules the planned steps import on the device."""
    wanted = []
    if target.harness == "loadgen":
        wanted.append(NEEDS["loadgen"])
    if "deepstream" in target.handoff:
        wanted.append(NEEDS["deepstream"])
    return wanted


def measured_model(job: Any, target: Target) -> str:
    """The file a job's hand-off packages: the ONNX (CPU), the engine (GPU) or the largest-batch DLA engine."""
    if job.placement == "cpu":
        return job.source
    if job.on_dla:
        return layout.engine_path(job.stem, max(target.batches))
    return layout.engine_path(job.stem)


def loadgen_step(bench_argv: Sequence[str], stem: str) -> Dict[str, Any]:
    argv = list(bench_argv)
    argv[argv.index("--out") + 1] = layout.loadgen_result_path(stem)
    return {"stage": "bench", "argv": argv + ["--harness", "loadgen"]}


def deepstream_source(job: Any, target: Target) -> str:
    """nvinfer always runs TensorRT: a CPU job hands over the ONNX a GPU engine of its precision is built from
    (INT8: the Q/DQ model, not onnxruntime's u8s8 flavour it measured)."""
    if job.placement == "cpu":
        return layout.engine_source("gpu", job.precision) or job.source
    return measured_model(job, target)


def handoff_steps(job: Any, target: Target, recipe: str) -> List[Dict[str, Any]]:
    model = measured_model(job, target)
    steps = []
    if "deepstream" in target.handoff:
        argv = ["handoff", "deepstream", deepstream_source(job, target), "--summary", layout.SUMMARY,
                "--out", layout.handoff_path(job.stem, "deepstream"), "--precision", job.precision]
        steps.append({"stage": "handoff", "argv": argv + ([] if job.placement == "cpu" else ["--build"])})
    if "triton" in target.handoff:
        steps.append({"stage": "handoff", "argv": [
            "handoff", "triton", model, "--summary", layout.SUMMARY, "--result", layout.result_path(job.stem),
            "--out", layout.handoff_path(job.stem, "triton"), "--name", "{}_{}".format(recipe, job.stem)]})
    return steps


def extend_steps(steps: List[Dict[str, Any]], job: Any, target: Target, recipe: str) -> List[Dict[str, Any]]:
    """A job's steps (build..., bench) with the LoadGen run before the bench and the hand-offs after it."""
    if target.harness == "loadgen":
        steps.insert(len(steps) - 1, loadgen_step(steps[-1]["argv"], job.stem))
    return steps + handoff_steps(job, target, recipe)


def fetched_trees(names: Sequence[str]) -> List[str]:
    """The MLPerf log trees of the fetched LoadGen results (workdir-relative folders to fetch with them)."""
    return [layout.mlperf_logs_path(n) for n in names if n.endswith(layout.LOADGEN_SUFFIX + ".json")]


def place_logs(result: Dict[str, Any], staged_json: str, stored_json: str) -> None:
    """Move a LoadGen result's fetched log tree beside its stored file and point the result at it there."""
    staged, stored = layout.mlperf_logs_path(staged_json), layout.mlperf_logs_path(stored_json)
    section = result.get("loadgen")
    if not isinstance(section, dict) or not os.path.isdir(staged):
        return
    shutil.rmtree(stored, ignore_errors=True)
    os.replace(staged, stored)
    device_root = str(section.get("logs") or "")
    section["logs"] = stored
    for measured in (section.get("accuracy") or {}).values():
        for key in ("log", "accuracy_txt"):
            if isinstance(measured.get(key), str) and measured[key].startswith(device_root):
                measured[key] = stored + measured[key][len(device_root):]


def handoff_home(results_root: str, target: str, recipe: str, stem: str) -> str:
    return os.path.join(results_root, target, layout.HANDOFF_DIR, "{}.{}".format(recipe, stem))


def handoff_folders(jobs: Sequence[Any], target: Target) -> List[Optional[str]]:
    """Each job's hand-off folder on the device (None when the target asks for none)."""
    return [("{}/{}".format(layout.HANDOFF_DIR, job.stem) if target.handoff else None) for job in jobs]


def fetch_handoffs(transport: Any, results_root: str, target: Target, recipe: str, log: Any) -> List[str]:
    """Every handoff/<stem>/ the device built, copied to <results>/<target>/handoff/<recipe>.<stem>/."""
    if not target.handoff:
        return []
    listed = transport.run("ls {} 2>/dev/null || true".format(layout.HANDOFF_DIR),
                           "listing the hand-off packages on {}".format(transport.label)).stdout.split()
    home = os.path.join(results_root, target.name, layout.HANDOFF_DIR)
    placed = []
    for stem in sorted(listed):
        transport.fetch(["{}/{}".format(layout.HANDOFF_DIR, stem)], home)
        destination = handoff_home(results_root, target.name, recipe, stem)
        shutil.rmtree(destination, ignore_errors=True)
        os.replace(os.path.join(home, stem), destination)
        placed.append(destination)
    if placed:
        log("[fetch] {} hand-off package(s) ({}) -> {}".format(len(placed), ", ".join(target.handoff), home))
    return placed
