"""`edgekit deploy`: host stages here, then measure on a device over SSH and bring the results home.

Steps, each announced, each failing with its own one-line reason:
  1. host stages (reused when up to date);
  2. device bundle: a wheel of edgekit (device side only needs numpy, pyyaml, onnxruntime or
     TensorRT) plus the ONNX models, calib.cache, summary.json and the target file;
  3. checks on the device: reachable, free disk, and for docker targets the `nvidia` runtime and the
     L4T release matching the target;
  4. copy the bundle with scp;
  5. on the device: install the wheel into the bundle folder, build engines where TensorRT is
     present, run the benchmark scenarios with power sampling, write result JSON files;
  6. fetch the result files into benchmarks/results/<target>/, each written atomically, and print them.

Every command is an argument list; the one command line that runs on the device is assembled from
shlex-quoted parts only, never from unquoted user input.
"""

import glob
import os
import shlex
import shutil
import subprocess
import sys
from typing import Callable, Dict, List, Optional, Sequence

from .bench.results import load_result, result_rows
from .errors import EdgekitError
from .targets import Target

REMOTE_ROOT = "edgekit-deploy"
MODEL_FILES = ("model.fp32.onnx", "model.fp16.onnx", "model.int8.qdq.onnx", "model.int8.cpu.onnx")


class Ssh(object):
    """ssh/scp/rsync argument lists for one device; `~/.ssh/config` is honoured (plain ssh)."""

    def __init__(self, device: str, port: Optional[int] = None, key: Optional[str] = None,
                 timeout: int = 15, known_hosts: Optional[str] = None) -> None:
        if not device or device.startswith("-") or any(c.isspace() for c in device):
            raise EdgekitError("DEVICE must look like user@host (or a host from ~/.ssh/config), got {!r}".format(
                device))
        self.device = device
        self.port = port
        self.key = key
        if key and not os.path.isfile(key):
            raise EdgekitError("SSH key not found: {}".format(key))
        self.options = ["-o", "BatchMode=yes", "-o", "ConnectTimeout={}".format(timeout),
                        "-o", "StrictHostKeyChecking=accept-new"]
        if key:
            self.options += ["-i", key, "-o", "IdentitiesOnly=yes"]
        if known_hosts:
            self.options += ["-o", "UserKnownHostsFile={}".format(known_hosts)]

    def ssh(self, remote_command: str) -> List[str]:
        port = ["-p", str(self.port)] if self.port else []
        return ["ssh"] + self.options + port + [self.device, remote_command]

    def scp(self, sources: Sequence[str], destination: str) -> List[str]:
        port = ["-P", str(self.port)] if self.port else []
        return ["scp", "-q", "-r"] + self.options + port + list(sources) + [destination]

    def remote_path(self, path: str) -> str:
        return "{}:{}".format(self.device, path)


def _run(argv: List[str], step: str, timeout: int = 3600, capture: bool = True) -> str:
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=timeout)
    except FileNotFoundError:
        raise EdgekitError("{}: {} is not installed on this host".format(step, argv[0])) from None
    except subprocess.TimeoutExpired:
        raise EdgekitError("{}: no answer within {} s".format(step, timeout)) from None
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr or "").splitlines() if line.strip()]
        raise EdgekitError("{} failed: {}".format(step, lines[-1] if lines else "exit status {}".format(
            proc.returncode)))
    return proc.stdout or ""


def build_bundle(artifacts: str, target_file: str, bundle: str,
                 log: Callable[[str], None] = print) -> List[str]:
    """The folder that goes to the device: wheel, models, calibration cache, summary, target."""
    os.makedirs(bundle, exist_ok=True)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for old in glob.glob(os.path.join(bundle, "edgekit-*.whl")):
        os.unlink(old)
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", bundle, repo],
         "building the edgekit wheel")
    files = [os.path.basename(p) for p in glob.glob(os.path.join(bundle, "edgekit-*.whl"))]
    for name in MODEL_FILES + ("calib.cache", "summary.json"):
        source = os.path.join(artifacts, name)
        if not os.path.exists(source):
            raise EdgekitError("{} is missing: run the host stages first (edgekit run)".format(source))
        shutil.copy2(source, os.path.join(bundle, name))
        files.append(name)
    shutil.copy2(target_file, os.path.join(bundle, "target.yaml"))
    files.append("target.yaml")
    log("[bundle] {} files in {}".format(len(files), bundle))
    return files


def device_script(target: Target, remote_dir: str, python: str) -> str:
    """The one shell command run on the device; every variable part is shlex-quoted."""
    q = shlex.quote
    lib = remote_dir + "/lib"
    env = "PYTHONPATH={} ".format(q(lib))
    edgekit = env + "{} -m edgekit.cli".format(q(python))
    steps = ["set -e", "cd {}".format(q(remote_dir)), "mkdir -p results",
             "{} -m pip install --quiet --no-deps --upgrade --target {} edgekit-*.whl".format(q(python), q(lib))]
    batches = ",".join(str(b) for b in target.batches)
    models = []
    if "cpu" in target.placements:
        models += [("model.fp32.onnx", "fp32")] if "fp32" in target.precisions else []
        models += [("model.int8.cpu.onnx", "int8")] if "int8" in target.precisions else []
    for model, precision in models:
        stem = model[:-5]
        steps.append("{} bench {} --summary summary.json --precision {} --seconds 1 --batches {} --out {} "
                     "--csv {}".format(edgekit, q(model), q(precision), q(batches), q("results/{}.json".format(stem)),
                                       q("results/{}.csv".format(stem))))
    gpu_builds = []
    for placement in target.placements:
        if placement == "cpu":
            continue
        for precision in target.precisions:
            if placement.startswith("dla") and precision == "fp32":
                continue
            if precision == "int8":
                source = "model.int8.qdq.onnx" if placement == "gpu" else "model.fp32.onnx"
            else:
                source = "model.{}.onnx".format(precision)
            engine = "model.{}.{}.engine".format(precision, placement)
            build = "{} build-engine {} --precision {} --out {} --timing-cache timing.cache".format(
                edgekit, q(source), q(precision), q(engine))
            if placement.startswith("dla"):
                build += " --dla {}".format(placement[3:])
                if precision == "int8":
                    build += " --calib calib.cache"
            gpu_builds.append(build)
            gpu_builds.append("{} bench {} --summary summary.json --batches {} --out {}".format(
                edgekit, q(engine), q(batches), q("results/{}.{}.json".format(precision, placement))))
    steps += gpu_builds
    return " && ".join(steps)


def deploy(artifacts: str, target: Target, target_file: str, device: str, ssh_port: Optional[int] = None,
           ssh_key: Optional[str] = None, python: str = "python3", results_root: str = "benchmarks/results",
           known_hosts: Optional[str] = None, log: Callable[[str], None] = print) -> List[Dict[str, object]]:
    """Steps 2-6 above, for host stages already run into `artifacts`. Returns the fetched results."""
    ssh = Ssh(device, ssh_port, ssh_key, known_hosts=known_hosts)
    recipe = os.path.basename(os.path.normpath(artifacts))
    remote_dir = "{}/{}".format(REMOTE_ROOT, recipe)

    log("[check] reaching {}".format(device))
    facts = _run(ssh.ssh("uname -m; df -Pk . | tail -1; cat /etc/nv_tegra_release 2>/dev/null | head -1; "
                         "command -v docker >/dev/null && docker info --format '{{json .Runtimes}}' 2>/dev/null "
                         "|| echo no-docker"), "reaching {} over SSH".format(device), timeout=60).splitlines()
    machine = facts[0].strip() if facts else "?"
    free_kb = int(facts[1].split()[3]) if len(facts) > 1 and len(facts[1].split()) > 3 else 0
    if free_kb and free_kb < 512 * 1024:
        raise EdgekitError("{} has {:.0f} MiB free in its home folder; the bundle and engines need 512 MiB".format(
            device, free_kb / 1024.0))
    if target.arch not in ("native", machine):
        raise EdgekitError("target {} is {} but {} is {}".format(target.name, target.arch, device, machine))
    if target.runtime == "docker":
        if "no-docker" in facts[-1]:
            raise EdgekitError("{} has no Docker; install docker and the nvidia container runtime "
                               "(README: device set-up)".format(device))
        if "nvidia" not in facts[-1]:
            raise EdgekitError("{}'s Docker has no nvidia runtime; install nvidia-container-toolkit".format(device))
        release = next((f for f in facts if f.startswith("# R")), "")
        if target.l4t and ("R" + target.l4t.split(".")[0][1:] + " ") not in release:
            raise EdgekitError("{} runs {} but target {} is for L4T {}: the container would not match".format(
                device, release.strip() or "no L4T", target.name, target.l4t))
        raise EdgekitError("docker targets are checked but not yet run by edgekit deploy; run the image by hand "
                           "(README) for now")

    bundle = os.path.join(artifacts, "device_bundle")
    build_bundle(artifacts, target_file, bundle, log)
    log("[copy] bundle -> {}:{}".format(device, remote_dir))
    _run(ssh.ssh("mkdir -p {}".format(shlex.quote(remote_dir))), "creating {} on {}".format(remote_dir, device), 60)
    _run(ssh.scp([os.path.join(bundle, name) for name in sorted(os.listdir(bundle))],
                 ssh.remote_path(remote_dir + "/")), "copying the bundle to {}".format(device))

    log("[run] benchmarks on {} (target {})".format(device, target.name))
    _run(ssh.ssh(device_script(target, remote_dir, python)), "running the benchmarks on {}".format(device),
         capture=False)

    destination = os.path.join(results_root, target.name)
    os.makedirs(destination, exist_ok=True)
    staging = os.path.join(destination, ".incoming")
    if os.path.isdir(staging):
        shutil.rmtree(staging)
    os.makedirs(staging)
    log("[fetch] results -> {}".format(destination))
    _run(ssh.scp([ssh.remote_path(remote_dir + "/results/*.json")], staging + "/"),
         "fetching the results from {}".format(device))
    fetched = []
    for path in sorted(glob.glob(os.path.join(staging, "*.json"))):
        result = load_result(path)  # a damaged file is an error here, before anything is overwritten
        final = os.path.join(destination, os.path.basename(path))
        os.replace(path, final)
        fetched.append(result)
    shutil.rmtree(staging, ignore_errors=True)
    for result in fetched:
        for row in result_rows(result):
            log("{:<26} {:<13} batch {:>3}  p50 {:>9.3f} ms  p99 {:>9.3f} ms  {:>9.1f} img/s".format(
                os.path.basename(str(row["model"])), row["scenario"], row["batch"], row["p50_ms"], row["p99_ms"],
                row["throughput"] or 0.0))
    return fetched
