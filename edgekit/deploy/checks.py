"""`[check]`: can this device measure this target? One round trip, seconds, before any host work.

One shell command gathers the device's facts as `key=value` lines: architecture, free disk, the
L4T release, the power mode, Docker and the image (docker targets), and a tiny `python -c` probe of
the interpreter that will run the jobs (inside the image for docker targets): its version and the
modules the planned jobs import (numpy, yaml, and what each planned runner's registry entry says it
needs: onnxruntime for CPU jobs; tensorrt and pycuda or cuda-python for GPU/DLA jobs). `check_device`
then refuses, with the reason, the runner that needs it and the fix, anything that would fail minutes
later; the target's `l4t`, `tensorrt` and `python` are compared with what the device reports.
"""

import re
import shlex
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ..device.bench.environment import parse_l4t_release
from ..device.runtime.registry import Need
from ..device.runtime.registry import get as runner_entry
from ..errors import EdgekitError
from ..targets import Target
from .deliverables import device_needs

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

# What every job needs, whatever its runner; each runner's own needs are in its registry entry.
BASE_NEEDS = (Need(("numpy",), "{python} -m pip install numpy"), Need(("yaml",), "{python} -m pip install pyyaml"))


def needs_of(runners: Iterable[str], target: Optional[Target] = None) -> List[Tuple[str, Need]]:
    """(who needs it, the need): the base modules, each runner's declared needs, then what the target's
    harness: and handoff: keys add (deliverables.device_needs)."""
    found = [("", need) for need in BASE_NEEDS]
    for name in sorted(set(runners)):
        found += [("the {} runner".format(name), need) for need in runner_entry(name).needs]
    return found + (device_needs(target) if target is not None else [])


def install_hint(need: Need, python: str) -> str:
    return need.install.replace("{python}", shlex.quote(python))


def probe_modules(runners: Iterable[str], target: Optional[Target] = None) -> List[str]:
    modules: List[str] = []
    for _, need in needs_of(runners, target):
        modules += [m for m in need.modules if m not in modules]
    return modules


def describe_runners(facts: Dict[str, str], runners: Iterable[str]) -> str:
    """Each planned runner with the version of the module it found first: "tensorrt (tensorrt 8.5.2.2)"."""
    shown = []
    for name in sorted(set(runners)):
        needs = runner_entry(name).needs
        state = facts.get("py.mod." + needs[0].modules[0], "") if needs else ""
        shown.append("{} ({} {})".format(name, needs[0].modules[0], state[2:].strip()) if state.startswith("ok")
                     else name)
    return ", ".join(shown) or "none"


def facts_script(target: Target, python: str, runners: Iterable[str]) -> str:
    """The one shell command that asks the device what it is."""
    q = shlex.quote
    probe = "-c {} {}".format(q(PROBE), " ".join(q(m) for m in probe_modules(runners, target)))
    parts = ["echo arch=$(uname -m)", "echo free_kb=$(df -Pk . 2>/dev/null | tail -n +2 | awk '{print $4}')",
             "echo l4t=$(head -1 /etc/nv_tegra_release 2>/dev/null)",
             "echo nvpmodel=$(nvpmodel -q 2>/dev/null | tr '\\n' ' ')",
             "command -v sha256sum >/dev/null && echo sha256sum=yes"]
    if target.launch == "docker":
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


def check_python(target: Target, device: str, facts: Dict[str, str], python: str, runners: Iterable[str]) -> None:
    runners = sorted(set(runners))
    where = "{}'s Python ({}{})".format(device, python, " in " + target.image if target.launch == "docker" else "")
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
    for who, need in needs_of(runners, target):
        _need(facts, who, need, where, python)
    if "tensorrt" in runners:
        trt = facts["py.mod.tensorrt"][2:].strip()
        if target.tensorrt and not same_release(target.tensorrt, trt):
            raise EdgekitError("{} has TensorRT {} but target {} is for TensorRT {}: engines and calibration "
                               "caches would not match; fix the target's tensorrt:".format(
                                   where, trt or "of unknown version", target.name, target.tensorrt))


def _need(facts: Dict[str, str], who: str, need: Need, where: str, python: str) -> None:
    states = [facts.get("py.mod." + m, "missing (not probed)") for m in need.modules]
    if any(state.startswith("ok") for state in states):
        return
    reason = states[0][len("missing"):].strip()
    broken = "" if reason.startswith(("ModuleNotFoundError", "ImportError: No module")) or not reason \
        else " ({})".format(reason[:160])
    whose = ", which {} needs".format(who) if who else ""
    raise EdgekitError("{} has no {}{}{}: install it there: {} (or point --device-python / python_bin at an "
                       "interpreter that has it)".format(where, need.name, broken, whose, install_hint(need, python)))


def check_device(target: Target, device: str, facts: Dict[str, str], python: str = "python3",
                 runners: Sequence[str] = ()) -> None:
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
                "container" if target.launch == "docker" else "TensorRT and CUDA"))
    if target.launch == "docker":
        check_docker(target, device, facts)
    check_python(target, device, facts, python, runners)
