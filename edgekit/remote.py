"""`edgekit deploy`: host stages here, then measure on a device over SSH and bring the results home.

Steps, each announced, each failing with its own one-line reason:
  1. checks on the device (`reach`, seconds, so first): reachable, free disk, architecture, and for
     docker targets Docker, its `nvidia` runtime, the L4T release matching the target and the image;
  2. host stages (reused when up to date);
  3. device bundle: a wheel of edgekit (device side only needs numpy, pyyaml, onnxruntime or
     TensorRT) plus the ONNX models, calib.cache, summary.json, eval.npz and the target file;
  4. copy what changed (sha256 on both ends; a re-run sends nothing the device already has);
  5. on the device, natively or in the target's image (`docker run --runtime nvidia`): install the
     wheel into the bundle folder, build engines (timing cache kept there between runs), run the
     benchmark scenarios with power sampling, and score eval.npz's images with each engine; a job
     whose result is already there is skipped;
  6. fetch the result files into benchmarks/results/<target>/ (validated first, then moved into place
     under their run id, so earlier runs stay as history), clear them on the device, print them.

Without a device, the same script runs here for the `cpu` target.

Every command is an argument list; the one command line that runs on the device is assembled from
shlex-quoted parts only, never from unquoted user input.
"""

import glob
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
from typing import Callable, Dict, List, Optional, Sequence

from .artifacts import remove_if_exists, sha256_file
from .device.bench.results import load_result, result_rows, save_result
from .errors import EdgekitError
from .targets import Target

REMOTE_ROOT = "edgekit-deploy"
RUN_TIMEOUT = 6 * 3600  # a first Xavier run builds ~9 engines (minutes each) before its sweeps
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


def _run(argv: List[str], step: str, timeout: int = 3600, capture: bool = True,
         env: Optional[Dict[str, str]] = None) -> str:
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=timeout, env=env)
    except FileNotFoundError:
        raise EdgekitError("{}: {} is not installed on this host".format(step, argv[0])) from None
    except subprocess.TimeoutExpired:
        raise EdgekitError("{}: no answer within {} s".format(step, timeout)) from None
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr or "").splitlines() if line.strip()]
        raise EdgekitError("{} failed: {}".format(step, lines[-1] if lines else "exit status {}".format(
            proc.returncode)))
    return proc.stdout or ""


def _link_or_copy(source: str, destination: str) -> None:
    """A hard link where the file system allows it (a bundle costs no disk), else a copy."""
    remove_if_exists(destination)
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def bundle_variants(artifacts: str) -> List[str]:
    """The variants (teacher, intermediate rounds) the host stages exported, from summary.json."""
    try:
        with open(os.path.join(artifacts, "summary.json"), encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return []
    return [v["name"] for v in summary.get("variants", [])
            if os.path.exists(os.path.join(artifacts, v.get("path", "")))]


def build_bundle(artifacts: str, target_file: str, bundle: str, variants: Sequence[str] = (), wheel: bool = True,
                 log: Callable[[str], None] = print) -> List[str]:
    """The folder that goes to the device: wheel, models, calibration cache, summary, target.

    Returns the bundle's files as paths relative to `bundle`.
    """
    os.makedirs(bundle, exist_ok=True)
    files = []
    if wheel:
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        for old in glob.glob(os.path.join(bundle, "edgekit-*.whl")):
            os.unlink(old)
        # A fixed timestamp makes the wheel byte-identical for identical sources, so a re-run copies nothing.
        _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", bundle,
              repo], "building the edgekit wheel", env=dict(os.environ, SOURCE_DATE_EPOCH="315532800"))
        files = [os.path.basename(p) for p in glob.glob(os.path.join(bundle, "edgekit-*.whl"))]
    names = list(MODEL_FILES) + ["calib.cache", "summary.json", "eval.npz"]
    names += [os.path.join("variants", "{}.fp32.onnx".format(v)) for v in variants]
    for name in names:
        source = os.path.join(artifacts, name)
        if not os.path.exists(source):
            raise EdgekitError("{} is missing: run the host stages first (edgekit run)".format(source))
        os.makedirs(os.path.dirname(os.path.join(bundle, name)), exist_ok=True)
        _link_or_copy(source, os.path.join(bundle, name))
        files.append(name)
    shutil.copy2(target_file, os.path.join(bundle, "target.yaml"))
    files.append("target.yaml")
    log("[bundle] {} files in {}".format(len(files), bundle))
    return files


class Job(object):
    """One measurement on the device: a model variant at a precision on a placement."""

    def __init__(self, variant: str, precision: str, placement: str, source: str,
                 accuracy_from: Optional[str] = None) -> None:
        self.variant, self.precision, self.placement, self.source = variant, precision, placement, source
        # The exported model whose measured top-1 stands for this job's (an engine's nearest ONNX twin).
        self.accuracy_from = accuracy_from or source

    @property
    def stem(self) -> str:
        return "{}.{}.{}".format(self.variant, self.precision, self.placement)

    @property
    def engine(self) -> Optional[str]:
        return None if self.placement == "cpu" else "engines/{}.engine".format(self.stem)

    def __repr__(self) -> str:
        return "Job({})".format(self.stem)


def device_jobs(target: Target, variants: Sequence[str] = ()) -> List[Job]:
    """What a target measures: the student at each precision on each placement, plus the teacher and
    the intermediate spiral rounds (`variants`) at one precision for the accuracy/latency Pareto chart.

    CPU: FP32, FP16 (as exported; onnxruntime has few FP16 CPU kernels, which the figure shows) and
    INT8 (u8s8, `model.int8.cpu.onnx`).
    GPU: FP32/FP16 from the FP32 ONNX with builder flags, INT8 from the explicit Q/DQ model.
    DLA: FP16, and INT8 implicit with `calib.cache` (DLA runs no FP32 and no explicit Q/DQ in 8.5).
    """
    jobs: List[Job] = []
    for placement in target.placements:
        for precision in target.precisions:
            if placement == "cpu":
                source = {"fp32": "model.fp32.onnx", "fp16": "model.fp16.onnx",
                          "int8": "model.int8.cpu.onnx"}[precision]
            elif placement.startswith("dla"):
                if precision == "fp32":
                    continue  # DLA runs FP16 and INT8 only
                source = {"fp16": "model.fp16.onnx", "int8": "model.fp32.onnx"}[precision]
            else:
                source = {"fp32": "model.fp32.onnx", "fp16": "model.fp16.onnx",
                          "int8": "model.int8.qdq.onnx"}[precision]
            # DLA INT8 runs the FP32 graph with calib.cache: the same calibration as the Q/DQ model,
            # whose onnxruntime top-1 is the closest measured figure.
            twin = {"fp32": "model.fp32.onnx", "fp16": "model.fp16.onnx",
                    "int8": "model.int8.cpu.onnx" if placement == "cpu" else "model.int8.qdq.onnx"}[precision]
            jobs.append(Job("student", precision, placement, source, twin))
    if variants and jobs:
        first = jobs[0]
        # Variants have no calibration of their own: the GPU measures them in FP16, the CPU in FP32.
        precision = "fp32" if first.placement == "cpu" else "fp16"
        for variant in variants:
            jobs.append(Job(variant, precision, first.placement, "variants/{}.fp32.onnx".format(variant)))
    return jobs


def bundle_fingerprint(bundle: str, files: Sequence[str], *conditions: object) -> str:
    """One hash over every bundle file's name and content and the run's `conditions` (measuring
    seconds, power mode): results kept on the device for a resume are only trusted while this is
    unchanged."""
    digest = hashlib.sha256(repr(conditions).encode("utf-8"))
    # summary.json is rewritten (timestamps) by every host run; its figures change only with the models.
    for name in sorted(f for f in files if f != "summary.json"):
        digest.update("{}\0{}\n".format(name, sha256_file(os.path.join(bundle, name))).encode("utf-8"))
    return digest.hexdigest()[:16]


def device_script(target: Target, remote_dir: str, python: str, variants: Sequence[str] = (),
                  wheel: Optional[str] = "edgekit-0-py3-none-any.whl", seconds: float = 1.0,
                  fingerprint: str = "") -> str:
    """The one shell command run on the device; every variable part is shlex-quoted.

    Resumable: a job whose result file is already there is skipped (results are removed only once
    the host has them, and all of them when the bundle's `fingerprint` changed: they measured other
    files), and engines are rebuilt only when their ONNX or TensorRT changed. A job that fails is
    named on stderr and the others still run; the script then exits 3, after every job had its turn.
    `wheel=None` runs the edgekit already installed (the local `cpu` target).
    """
    q = shlex.quote
    lib = "lib"  # inside remote_dir: the script cds there first
    if wheel:
        edgekit = "PYTHONPATH={} {} -m edgekit.cli".format(q(lib), q(python))
    else:
        edgekit = "{} -m edgekit.cli".format(q(python))
    steps = ["set -e", "cd {}".format(q(remote_dir)), "mkdir -p results engines", "failed=''",
             "if [ \"$(cat results/.bundle 2>/dev/null)\" != {0} ]; then rm -f results/*.json; "
             "echo {0} > results/.bundle; fi".format(q(fingerprint or "none"))]
    if wheel:
        steps.append("{} -m pip install --quiet --no-deps --upgrade --target {} {}".format(q(python), q(lib),
                                                                                         q(wheel)))
    batches = ",".join(str(b) for b in target.batches)
    for job in device_jobs(target, variants):
        result = "results/{}.json".format(job.stem)
        commands = []
        model = job.source
        if job.engine:
            build = "{} build-engine {} --precision {} --out {} --timing-cache timing.cache --max-batch {}".format(
                edgekit, q(job.source), q(job.precision), q(job.engine), max(target.batches))
            if job.placement.startswith("dla"):
                build += " --dla {}".format(job.placement[3:])
                if job.precision == "int8":
                    build += " --calib calib.cache"
            commands.append(build)
            model = job.engine
        commands.append("{} bench {} --summary summary.json --accuracy-from {} --precision {} --seconds {} "
                        "--batches {} --variant {} --target {} --placement {} --eval eval.npz --out {}".format(
                            edgekit, q(model), q(job.accuracy_from), q(job.precision), seconds, q(batches),
                            q(job.variant), q(target.name), q(job.placement), q(result)))
        # `a && b || c`: set -e does not apply inside, so a failed build is caught here, named, and
        # the other jobs still run.
        steps.append("if [ -s {0} ]; then echo {1}; else {2} || {{ echo {3} >&2; failed=\"$failed \"{4}; }}; "
                     "fi".format(q(result), q("[run] {} already measured, kept".format(job.stem)),
                                 " && ".join(commands), q("edgekit: job {} failed (above)".format(job.stem)),
                                 q(job.stem)))
    steps.append("if [ -n \"$failed\" ]; then echo \"jobs failed:$failed\" >&2; exit 3; fi")
    return "\n".join(steps)


def docker_command(target: Target, remote_dir: str, script: str) -> str:
    """Run `script` inside the target's image with the bundle folder mounted at /work.

    The nvidia runtime brings the GPU, DLA and TensorRT libraries in (`--gpus` does not work on
    Jetson); the container sees the board's /sys, so the INA3221 rails are readable inside. It runs
    as the SSH user, so everything it writes into the bundle folder stays theirs to clear. The
    nvpmodel mode is read outside, in the device checks, and recorded with each fetched result.

    The container is named after the bundle folder: when an SSH connection drops, the container
    goes on measuring, and the next deploy removes it before starting, so two never share the chip.
    """
    q = shlex.quote
    name = "edgekit-" + re.sub(r"[^A-Za-z0-9_.-]", "-", remote_dir.rstrip("/").rsplit("/", 1)[-1])
    # --user drops supplementary groups; L4T's /dev/nvhost-* belong to `video`: add them all back.
    groups = "$(for g in $(id -G); do printf -- '--group-add %s ' \"$g\"; done)"
    return "cd {0} && {{ docker rm -f {1} >/dev/null 2>&1 || true; }} && " \
           "docker run --rm --name {1} --runtime nvidia --network host --ipc host --user \"$(id -u):$(id -g)\" " \
           "{2} -e HOME=/work -v \"$PWD\":/work -w /work --entrypoint /bin/sh {3} -c {4}".format(
               q(remote_dir), q(name), groups, q(target.image or ""), q(script))


FACTS = ("echo arch=$(uname -m); echo free_kb=$(df -Pk . | tail -1 | awk '{print $4}'); "
         "echo l4t=$(head -1 /etc/nv_tegra_release 2>/dev/null); "
         "echo nvpmodel=$(nvpmodel -q 2>/dev/null | tr '\\n' ' '); "
         "if ! command -v docker >/dev/null; then echo docker=none; "
         "elif out=$(docker info --format '{{json .Runtimes}}' 2>&1); then echo docker=$out | tr '\\n' ' '; echo; "
         "else echo docker=down: $out | tr '\\n' ' '; echo; fi; "
         "command -v sha256sum >/dev/null && echo sha256sum=yes")


def device_facts(ssh: "Ssh", image: Optional[str]) -> Dict[str, str]:
    """What the device is, in one SSH round trip: `key=value` lines."""
    command = FACTS
    if image:
        command += "; docker image inspect --format '{{{{.Id}}}}' {} >/dev/null 2>&1 && echo image=yes " \
                   "|| echo image=no".format(shlex.quote(image))
    out = _run(ssh.ssh(command), "reaching {} over SSH".format(ssh.device), timeout=60)
    facts = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        facts[key.strip()] = value.strip()
    return facts


def check_device(target: Target, device: str, facts: Dict[str, str]) -> None:
    """Refuse, with the reason, a device that cannot run `target`."""
    free_kb = int(facts.get("free_kb") or 0)
    if free_kb and free_kb < 512 * 1024:
        raise EdgekitError("{} has {:.0f} MiB free in its home folder; the bundle and engines need 512 MiB".format(
            device, free_kb / 1024.0))
    machine = facts.get("arch", "?")
    if target.arch not in ("native", machine):
        raise EdgekitError("target {} is {} but {} is {}".format(target.name, target.arch, device, machine))
    if target.runtime != "docker":
        return
    docker = facts.get("docker", "none")
    if docker == "none":
        raise EdgekitError("{} has no Docker; install docker and the nvidia container runtime "
                           "(README: device set-up)".format(device))
    if "permission denied" in docker.lower():
        raise EdgekitError("{}'s user may not use Docker; add it to the docker group: sudo usermod -aG docker "
                           "$USER, then log in again".format(device))
    if docker.startswith("down:"):
        raise EdgekitError("{} has Docker but its daemon does not answer ({}); start it: sudo systemctl start "
                           "docker".format(device, re.sub(r"^null\s*", "", docker[5:].strip())[:120]))
    if "nvidia" not in docker:
        raise EdgekitError("{}'s Docker has no nvidia runtime; install nvidia-container-toolkit".format(device))
    release = facts.get("l4t", "")
    if target.l4t and ("R" + target.l4t.split(".")[0][1:] + " ") not in release:
        raise EdgekitError("{} runs {} but target {} is for L4T {}: the container would not match".format(
            device, release or "no L4T", target.name, target.l4t))
    if facts.get("image") != "yes":
        raise EdgekitError("{} has no image {}; build it there first: make docker-jetson (README)".format(
            device, target.image))


def _sha_listing(text: str) -> Dict[str, str]:
    found = {}
    for line in text.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and len(parts[0]) == 64:
            found[parts[1].lstrip("*").strip()] = parts[0]
    return found


def _copy_changed(ssh: "Ssh", bundle: str, files: Sequence[str], remote_dir: str, can_hash: bool,
                  log: Callable[[str], None]) -> None:
    """Send only the files the device lacks or holds in another version (resume, not redo)."""
    q = shlex.quote
    subdirs = sorted({os.path.dirname(f) for f in files if os.path.dirname(f)})
    _run(ssh.ssh("mkdir -p " + " ".join(q(remote_dir + "/" + d) for d in [""] + subdirs + ["results", "engines"])),
         "creating {} on {}".format(remote_dir, ssh.device), 60)
    there: Dict[str, str] = {}
    if can_hash:
        there = _sha_listing(_run(ssh.ssh("cd {} && sha256sum -- {} 2>/dev/null || true".format(
            q(remote_dir), " ".join(q(f) for f in files))), "listing the bundle on {}".format(ssh.device), 300))
    changed = [f for f in files if there.get(f) != sha256_file(os.path.join(bundle, f))]
    if not changed:
        log("[copy] the device already has all {} files".format(len(files)))
        return
    log("[copy] {} of {} files -> {}:{}{}".format(
        len(changed), len(files), ssh.device, remote_dir,
        "" if len(changed) == len(files) else " ({}; the rest are there)".format(", ".join(changed[:4]))))
    for folder in [""] + subdirs:
        batch = [f for f in changed if os.path.dirname(f) == folder]
        if batch:
            _run(ssh.scp([os.path.join(bundle, f) for f in batch], ssh.remote_path(
                "{}/{}".format(remote_dir, folder).rstrip("/") + "/")), "copying the bundle to {}".format(ssh.device))


def _store(staging: str, destination: str, recipe: str, facts: Dict[str, str],
           log: Callable[[str], None]) -> List[Dict[str, object]]:
    """Validate every fetched file, then move each into place as <recipe>.<variant...>.<run id>.json."""
    results = []
    for path in sorted(glob.glob(os.path.join(staging, "*.json"))):
        try:
            results.append((path, load_result(path)))
        except EdgekitError as exc:  # reported and left out; the device copy is cleared with the rest
            log("[fetch] skipped {}: {}".format(os.path.basename(path), str(exc).replace(path, "").strip(" :")))
    os.makedirs(destination, exist_ok=True)
    stored = []
    for path, result in results:
        state = {k: facts[k] for k in ("l4t", "nvpmodel") if facts.get(k)}
        if state:
            result["device_state"] = state
            save_result(path, result)
        final = os.path.join(destination, "{}.{}.{}.json".format(recipe, os.path.basename(path)[:-5],
                                                                 result["run_id"]))
        os.replace(path, final)
        stored.append(result)
    shutil.rmtree(staging, ignore_errors=True)
    log("[fetch] {} result file(s) -> {}".format(len(stored), destination))
    return stored


def print_results(results: Sequence[Dict[str, object]], log: Callable[[str], None] = print) -> None:
    log("{:<22} {:<13} {:>5}  {:>9}  {:>9}  {:>10}  {:>7}".format(
        "variant.prec.place", "scenario", "batch", "p50 ms", "p99 ms", "img/s", "top-1"))
    for result in results:
        labels = result.get("labels") or {}
        top1 = (result.get("accuracy") or {}).get("top1")
        name = "{}.{}.{}".format(labels.get("variant"), result.get("model", {}).get("precision"),
                                 labels.get("placement"))
        for row in result_rows(result):
            log("{:<22} {:<13} {:>5}  {:>9.3f}  {:>9.3f}  {:>10.1f}  {:>7}".format(
                name, row["scenario"], row["batch"], row["p50_ms"], row["p99_ms"], row["throughput"] or 0.0,
                "{:.2f}%".format(top1) if top1 is not None else "-"))


class Reached(object):
    """A device that answered and passed the checks: its SSH arguments and what it said about itself."""

    def __init__(self, ssh: Optional[Ssh], facts: Dict[str, str]) -> None:
        self.ssh = ssh
        self.facts = facts


def reach(target: Target, device: Optional[str] = None, ssh_port: Optional[int] = None,
          ssh_key: Optional[str] = None, known_hosts: Optional[str] = None,
          log: Callable[[str], None] = print) -> Reached:
    """Step 1: can this target be measured there? Seconds, so it runs before minutes of host stages.

    With no `device` the target must run here (native, this machine's architecture).
    """
    if device is None:
        if target.runtime == "docker" or target.arch not in ("native", platform.machine()):
            raise EdgekitError("target {} runs on a device: give DEVICE=user@host (and SSH_PORT, SSH_KEY if "
                               "needed)".format(target.name))
        return Reached(None, {})
    ssh = Ssh(device, ssh_port, ssh_key, known_hosts=known_hosts)
    log("[check] reaching {}".format(device))
    facts = device_facts(ssh, target.image if target.runtime == "docker" else None)
    check_device(target, device, facts)
    log("[check] {} is {}{}{}".format(device, facts.get("arch"), ", " + facts["l4t"] if facts.get("l4t") else "",
                                      ", " + facts["nvpmodel"] if facts.get("nvpmodel") else ""))
    return Reached(ssh, facts)


def deploy(artifacts: str, target: Target, target_file: str, device: Optional[str] = None,
           ssh_port: Optional[int] = None, ssh_key: Optional[str] = None, python: str = "python3",
           results_root: str = "benchmarks/results", known_hosts: Optional[str] = None, seconds: float = 1.0,
           log: Callable[[str], None] = print, reached: Optional[Reached] = None) -> List[Dict[str, object]]:
    """Steps 3-6 above, for host stages already run into `artifacts`. Returns the fetched results.

    `reached` is what `reach` returned for this target and device (reached again when not given).
    With no `device`, the same device script runs here (target `cpu`): one code path, one schema.
    """
    if reached is None:
        reached = reach(target, device, ssh_port, ssh_key, known_hosts, log)
    recipe = os.path.basename(os.path.normpath(artifacts))
    variants = bundle_variants(artifacts)
    bundle = os.path.abspath(os.path.join(artifacts, "device_bundle"))
    destination = os.path.join(results_root, target.name)
    staging = os.path.join(results_root, ".incoming-{}".format(target.name))

    if reached.ssh is None:
        files = build_bundle(artifacts, target_file, bundle, variants, wheel=False, log=log)
        log("[run] {} measurement(s) here (target {})".format(len(device_jobs(target, variants)), target.name))
        failure = None
        try:
            _run(["sh", "-c", device_script(target, bundle, sys.executable, variants, wheel=None, seconds=seconds,
                                            fingerprint=bundle_fingerprint(bundle, files, seconds))],
                 "running the benchmarks", timeout=RUN_TIMEOUT, capture=False)
        except EdgekitError as exc:
            failure = exc  # file what was measured, then say what failed
        if os.path.isdir(staging):
            shutil.rmtree(staging)
        os.makedirs(staging)
        for path in glob.glob(os.path.join(bundle, "results", "*.json")):
            shutil.move(path, os.path.join(staging, os.path.basename(path)))
        fetched = _store(staging, destination, recipe, {}, log)
        print_results(fetched, log)
        if failure is not None:
            raise failure
        return fetched

    ssh, facts, device = reached.ssh, reached.facts, reached.ssh.device
    remote_dir = "{}/{}".format(REMOTE_ROOT, recipe)
    files = build_bundle(artifacts, target_file, bundle, variants, log=log)
    _copy_changed(ssh, bundle, files, remote_dir, facts.get("sha256sum") == "yes", log)

    jobs = device_jobs(target, variants)
    # A changed power mode or measuring time invalidates what an interrupted run left on the device.
    fingerprint = bundle_fingerprint(bundle, files, seconds, facts.get("nvpmodel"))
    wheel = next(f for f in files if f.endswith(".whl"))
    if target.runtime == "docker":
        log("[run] {} measurement(s) on {} in {} (--runtime nvidia)".format(len(jobs), device, target.image))
        command = docker_command(target, remote_dir, device_script(target, "/work", "python3", variants, wheel,
                                                                   seconds=seconds, fingerprint=fingerprint))
    else:
        log("[run] {} measurement(s) on {} (target {})".format(len(jobs), device, target.name))
        command = device_script(target, remote_dir, python, variants, wheel, seconds=seconds,
                                fingerprint=fingerprint)
    failure = None
    try:
        _run(ssh.ssh(command), "running the benchmarks on {}".format(device), timeout=RUN_TIMEOUT, capture=False)
    except EdgekitError as exc:
        failure = exc  # bring home what was measured, then say what failed

    if os.path.isdir(staging):
        shutil.rmtree(staging)
    os.makedirs(staging)
    log("[fetch] results <- {}".format(device))
    listing = _run(ssh.ssh("cd {} && ls results/ | grep '\\.json$' || true".format(shlex.quote(remote_dir))),
                   "listing the results on {}".format(device), 60).split()
    if listing:
        _run(ssh.scp([ssh.remote_path(remote_dir + "/results/*.json")], staging + "/"),
             "fetching the results from {}".format(device))
    fetched = _store(staging, destination, recipe, facts, log)
    # Only now that the host has them: the next deploy measures afresh instead of resuming.
    _run(ssh.ssh("rm -f {}/results/*.json".format(shlex.quote(remote_dir))), "clearing fetched results", 60)
    print_results(fetched, log)
    if failure is not None:
        raise failure
    return fetched
