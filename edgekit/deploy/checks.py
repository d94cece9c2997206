"""`[check]`: can this device measure this target? One round trip, seconds, before any host work.

One shell command gathers the device's facts as `key=value` lines: architecture, free disk, the
L4T release, the power mode, Docker and the image (docker targets), and a tiny `python -c` probe of
the interpreter that will run the jobs (inside the image for docker targets): its version and the
modules the planned jobs import (numpy, yaml; onnxruntime for CPU jobs; tensorrt and pycuda or
cuda-python for GPU/DLA jobs). `check_device` then refuses, with the reason and the fix, anything
that would fail minutes later; the target's `l4t`, `tensorrt` and `python` are compared with what
the device reports.
"""

import re
import shlex
from typing import Dict, List, Sequence, Set, Tuple

from ..device.bench.environment import parse_l4t_release
from ..errors import EdgekitError
from ..targets import Target
from .deliverables import device_modules

MIN_FREE_KB = 512 * 1024
MIN_PYTHON = (3, 8)

# Runs on whatever the device has (even Python 2), so a too-old interpreter is reported, not a SyntaxError.
PROBE = (
    "import sys, importlib\n"
    "print('py.version=%d.%d.%d' % tuple(sys.version_info[:3]))\n"
    "for name in sys.argv[1:]:\n"
    "    try:\n"
    "        m = importlib.import_module(name)\n"
    "        print('py.mod.%s=ok %s' % (name, getattr(m, '__version__', '') or ''))\n"
    "    except Exception as e:\n"
    "        print('py.mod.%s=missing %s: %s' % (name, type(e).__name__, str(e).replace('\\n', ' ')[:200]))\n"
)

# What each runtime needs on the device: (module to import, what to tell the user). Alternatives
# share a group: one of them suffices.
CUDA_BINDINGS = ("pycuda.driver", "cuda.bindings.runtime", "cuda.cudart")
BASE_MODULES = ("numpy", "yaml")
RUNTIME_MODULES = {"onnxruntime": ("onnxruntime",), "tensorrt": ("tensorrt",) + CUDA_BINDINGS}


def install_hint(module: str, python: str) -> str:
    q = shlex.quote(python)
    return {
        "numpy": "{} -m pip install numpy".format(q),
        "yaml": "{} -m pip install pyyaml".format(q),
        "onnxruntime": "{} -m pip install onnxruntime".format(q),
        "tensorrt": "it comes with JetPack: sudo apt install python3-libnvinfer (or use a docker target)",
        "pycuda.driver": "{} -m pip install pycuda (or cuda-python)".format(q),
        # no aarch64 or cp38 wheel of 6.0.17: pip builds the sdist there (a C++ compiler and Python headers)
        "mlperf_loadgen": "sudo apt install build-essential python3-dev && {} -m pip install "
                          "mlcommons-loadgen==6.0.17".format(q),
    }.get(module, "{} -m pip install {}".format(q, module.split(".")[0]))


def probe_modules(runtimes: Set[str]) -> List[str]:
    modules = list(BASE_MODULES)
    for runtime in sorted(runtimes):
        modules += [m for m in RUNTIME_MODULES[runtime] if m not in modules]
    return modules


def facts_script(target: Target, python: str, runtimes: Set[str]) -> str:
    """The one shell command that asks the device what it is."""
    q = shlex.quote
    modules = probe_modules(runtimes) + device_modules(target)
    probe = "-c {} {}".format(q(PROBE), " ".join(q(m) for m in modules))
    parts = ["echo arch=$(uname -m)", "echo free_kb=$(df -Pk . 2>/dev/null | tail -n +2 | awk '{print $4}')",
             "echo l4t=$(head -1 /etc/nv_tegra_release 2>/dev/null)",
             "echo nvpmodel=$(nvpmodel -q 2>/dev/null | tr '\\n' ' ')",
             "command -v sha256sum >/dev/null && echo sha256sum=yes"]
    if target.runtime == "docker":
        image = q(target.image or "")
        parts += ["if ! command -v docker >/dev/null; then echo docker=none; "
                  "elif out=$(docker info --format '{{json .Runtimes}}' 2>&1); then echo docker=$out | tr '\\n' ' '; "
                  "echo; else echo docker=down: $out | tr '\\n' ' '; echo; fi",
                  "if docker image inspect --format '{{{{.Id}}}}' {0} >/dev/null 2>&1; then echo image=yes; "
                  "docker run --rm --runtime nvidia --entrypoint {1} {0} {2} 2>&1 || echo py.status=$?; "
                  "else echo image=no; fi".format(image, q(python), probe)]
    else:
        parts.append("{} {} 2>&1 || echo py.status=$?".format(q(python), probe))
    return "; ".join(parts)


def parse_facts(text: str) -> Dict[str, str]:
    facts: Dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and " " not in key.strip():
            facts[key.strip()] = value.strip()
        elif line.strip():
            facts["py.output"] = (facts.get("py.output", "") + " " + line.strip()).strip()[:300]
    return facts


def _version(text: str) -> Tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text or "")[:3])


def same_release(wanted: str, found: str) -> bool:
    """'8.5.2' matches 8.5.2.2; '10.3' matches 10.3.0.30: the fields the target gives must agree."""
    want = _version(wanted)
    return bool(want) and _version(found)[:len(want)] == want


def check_docker(target: Target, device: str, facts: Dict[str, str]) -> None:
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
    if facts.get("image") != "yes":
        raise EdgekitError("{} has no image {}; build it there first: make docker-jetson (README)".format(
            device, target.image))


def check_python(target: Target, device: str, facts: Dict[str, str], python: str, runtimes: Set[str]) -> None:
    where = "{}'s Python ({}{})".format(device, python, " in " + target.image if target.runtime == "docker" else "")
    version = facts.get("py.version")
    if not version:
        said = facts.get("py.output") or "exit status {}".format(facts.get("py.status", "?"))
        raise EdgekitError("{} did not run: {}; point the target's python_bin or --device-python at the device's "
                           "interpreter".format(where, said))
    found = _version(version)
    if found[:2] < MIN_PYTHON:
        raise EdgekitError("{} is {}; edgekit needs Python >= {}.{}: set python_bin or --device-python".format(
            where, version, *MIN_PYTHON))
    if target.python and found[:2] != _version(target.python)[:2]:
        raise EdgekitError("{} is {} but target {} is for Python {}: fix the target's python: or use its "
                           "interpreter (--device-python)".format(where, version, target.name, target.python))
    for module in BASE_MODULES + (("onnxruntime",) if "onnxruntime" in runtimes else ()) + tuple(
            device_modules(target)):  # the harness: and handoff: keys' modules (deliverables.py)
        _need(facts, module, where, python)
    if "tensorrt" in runtimes:
        _need(facts, "tensorrt", where, python)
        if not any(facts.get("py.mod." + m, "").startswith("ok") for m in CUDA_BINDINGS):
            raise EdgekitError("{} has neither pycuda nor cuda-python (TensorRT jobs need one): install it there: "
                               "{}".format(where, install_hint("pycuda.driver", python)))
        trt = facts["py.mod.tensorrt"][2:].strip()
        if target.tensorrt and not same_release(target.tensorrt, trt):
            raise EdgekitError("{} has TensorRT {} but target {} is for TensorRT {}: engines and calibration "
                               "caches would not match; fix the target's tensorrt:".format(
                                   where, trt or "of unknown version", target.name, target.tensorrt))


def _need(facts: Dict[str, str], module: str, where: str, python: str) -> None:
    state = facts.get("py.mod." + module, "missing (not probed)")
    if not state.startswith("ok"):
        reason = state[len("missing"):].strip()
        broken = "" if reason.startswith(("ModuleNotFoundError", "ImportError: No module")) or not reason \
            else " ({})".format(reason[:160])
        raise EdgekitError("{} has no {}{}: install it there: {} (or point --device-python / python_bin at an "
                           "interpreter that has it)".format(where, module, broken, install_hint(module, python)))


def check_device(target: Target, device: str, facts: Dict[str, str], python: str = "python3",
                 runtimes: Sequence[str] = ()) -> None:
    """Refuse, with the reason and the fix, a device that cannot run `target`'s planned jobs."""
    free = facts.get("free_kb", "")
    if not free.isdigit():
        raise EdgekitError("could not read the free disk space on {} (df printed {!r}); the bundle and engines "
                           "need {} MiB: check `df -Pk ~` there".format(device, free, MIN_FREE_KB // 1024))
    if int(free) < MIN_FREE_KB:
        raise EdgekitError("{} has {:.0f} MiB free in its home folder; the bundle and engines need {} MiB".format(
            device, int(free) / 1024.0, MIN_FREE_KB // 1024))
    machine = facts.get("arch", "?")
    if target.arch not in ("native", machine):
        raise EdgekitError("target {} is {} but {} is {}".format(target.name, target.arch, device, machine))
    if target.l4t:
        line = facts.get("l4t", "")
        release = parse_l4t_release(line)
        if release != target.l4t:
            raise EdgekitError("{} runs {} but target {} is for L4T {}: the {} would not match".format(
                device, release or line or "no L4T", target.name, target.l4t,
                "container" if target.runtime == "docker" else "TensorRT and CUDA"))
    if target.runtime == "docker":
        check_docker(target, device, facts)
    check_python(target, device, facts, python, set(runtimes))
