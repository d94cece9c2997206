"""The deploy flow, the same for every transport (this machine or a device over SSH):

  1. [check]  the device's facts and its Python, one round trip, before any host work (`reach`);
  2. [host]   host stages (run by the CLI between `reach` and `deploy`);
  3. [bundle] wheel, models, re-tagged calib.cache, summary, eval.npz, target, jobs.json;
  4. [copy]   only what changed (sha256 on both ends);
  5. [run]    `edgekit run-jobs jobs.json` there, natively or in the target's image;
  6. [fetch]  results and error files, validated, stored under benchmarks/results/<target>/ as
              <recipe>.<variant>.<precision>.<placement>.<run id>[.error].json, then cleared there;
              the table is printed and the dashboard page refreshed.
A failed job prints its own `edgekit: error:` line; the others are stored; deploy then exits 2.
"""

import glob
import os
import platform
import re
import shlex
import shutil
import sys
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from ..device import layout
from ..device.bench.results import load_result, result_rows, save_result
from ..device.jobs import load_error
from ..errors import EdgekitError
from ..targets import Target
from . import deliverables
from .bundle import build_bundle, bundle_fingerprint, bundle_variants, write_jobs_file
from .checks import check_device, describe_runners, facts_script, parse_facts
from .plan import jobs_document, plan_jobs, runners_needed
from .transport import Local, Ssh, Transport, checked

REMOTE_ROOT = "edgekit-deploy"  # under the SSH user's home; EDGEKIT_REMOTE_ROOT names another folder
RUN_TIMEOUT = 6 * 3600  # a first Xavier run builds ~20 engines (minutes each) before its sweeps
WHEEL_DIR = "lib"


class Reached(NamedTuple):
    """A device that answered and passed the checks."""
    transport: Transport
    facts: Dict[str, str]
    python: str     # the interpreter that runs the jobs (inside the image for docker targets)
    wheel: bool     # whether edgekit travels as a wheel (it does unless the jobs run in this very edgekit)


def device_python(target: Target, device: Optional[str], python: Optional[str]) -> str:
    """--device-python, else the target's python_bin, else python3 there (this interpreter here)."""
    if python:
        return python
    if target.python_bin:
        return target.python_bin
    return "python3" if device else sys.executable


def transport_for(target: Target, recipe: str, artifacts: str, device: Optional[str], ssh_port: Optional[int] = None,
                  ssh_key: Optional[str] = None, known_hosts: Optional[str] = None) -> Transport:
    if device is None:
        if target.launch == "docker" or target.arch not in ("native", platform.machine()):
            raise EdgekitError("target {} runs on a device: give --device user@host (and --ssh-port, --ssh-key if "
                               "needed; with make: DEVICE=user@host SSH_PORT=... SSH_KEY=...)".format(target.name))
        return Local(os.path.abspath(os.path.join(artifacts, layout.BUNDLE_DIR)))
    root = os.environ.get("EDGEKIT_REMOTE_ROOT") or REMOTE_ROOT
    return Ssh(device, "{}/{}".format(root.rstrip("/"), recipe), ssh_port, ssh_key, known_hosts=known_hosts)


def reach(target: Target, transport: Transport, python: str, variants: Sequence[str] = (),
          log: Callable[[str], None] = print) -> Reached:
    """Step 1: can this target be measured there? Seconds, so it runs before minutes of host stages."""
    runners = runners_needed(plan_jobs(target, variants or ["teacher"]))
    log("[check] reaching {}".format(transport.label))
    out = transport.run(facts_script(target, python, runners), "reaching {}{}".format(
        transport.label, " over SSH" if isinstance(transport, Ssh) else ""), timeout=120, in_workdir=False).stdout
    facts = parse_facts(out)
    check_device(target, transport.label, facts, python, sorted(runners))
    log("[check] {} is {}{}{}, Python {}; runners: {}".format(
        transport.label, facts.get("arch"), ", " + facts["l4t"] if facts.get("l4t") else "",
        ", " + facts["nvpmodel"] if facts.get("nvpmodel") else "", facts.get("py.version"),
        describe_runners(facts, runners)))
    wheel = not (isinstance(transport, Local) and python == sys.executable)
    return Reached(transport, facts, python, wheel)


def device_command(python: str, wheel: Optional[str]) -> str:
    """The command run in the bundle folder: unpack edgekit (a pure-Python wheel is a zip: no pip needed
    on the device), then the job runner."""
    q = shlex.quote
    if not wheel:
        return "{} -m edgekit.cli run-jobs {}".format(q(python), layout.JOBS_FILE)
    unpack = "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])"
    return "rm -rf {0} && {1} -c {2} {3} {0} && PYTHONPATH={0} {1} -m edgekit.cli run-jobs {4}".format(
        WHEEL_DIR, q(python), q(unpack), q(wheel), layout.JOBS_FILE)


def docker_command(target: Target, workdir: str, script: str) -> str:
    """Run `script` inside the target's image with the bundle folder (the current one) mounted at /work.

    The nvidia runtime brings the GPU, DLA and TensorRT libraries in (`--gpus` does not work on
    Jetson); the container sees the board's /sys, so the power rails are readable inside. It runs
    as the SSH user, so everything it writes into the bundle folder stays theirs to clear.

    The container is named after the bundle folder: when an SSH connection drops, the container
    goes on measuring, and the next deploy removes it before starting, so two never share the chip.
    """
    q = shlex.quote
    name = "edgekit-" + re.sub(r"[^A-Za-z0-9_.-]", "-", workdir.rstrip("/").rsplit("/", 1)[-1])
    # --user drops supplementary groups; L4T's /dev/nvhost-* belong to `video`: add them all back.
    groups = "$(for g in $(id -G); do printf -- '--group-add %s ' \"$g\"; done)"
    return "{{ docker rm -f {0} >/dev/null 2>&1 || true; }} && " \
           "docker run --rm --name {0} --runtime nvidia --network host --ipc host --user \"$(id -u):$(id -g)\" " \
           "{1} -e HOME=/work -v \"$PWD\":/work -w /work --entrypoint /bin/sh {2} -c {3}".format(
               q(name), groups, q(target.image or ""), q(script))


def store_fetched(staging: str, destination: str, recipe: str, facts: Dict[str, str],
                  log: Callable[[str], None]) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """Validate every fetched file, then move each into place under its stored name. Returns
    (results, errors)."""
    results, errors = [], []
    for path in sorted(glob.glob(os.path.join(staging, "*.json"))):
        try:
            if layout.is_error_file(path):
                errors.append((path, load_error(path)))
            else:
                results.append((path, load_result(path)))
        except EdgekitError as exc:  # reported and left out; the device copy is cleared with the rest
            log("[fetch] skipped {}: {}".format(os.path.basename(path), str(exc).replace(path, "").strip(" :")))
    os.makedirs(destination, exist_ok=True)
    state = {k: facts[k] for k in ("l4t", "nvpmodel") if facts.get(k)}
    for path, result in results:
        stem = os.path.basename(path)[:-len(".json")]
        stored = os.path.join(destination, layout.stored_result_name(recipe, stem, result["run_id"]))
        deliverables.place_logs(result, path, stored)
        if state:
            result["device_state"] = state
        save_result(path, result)
        os.replace(path, stored)
    for path, error in errors:
        os.replace(path, os.path.join(destination, layout.stored_result_name(recipe, error["stem"], error["run_id"],
                                                                             error=True)))
    shutil.rmtree(staging, ignore_errors=True)
    log("[fetch] {} result file(s){} -> {}".format(len(results), ", {} failure(s)".format(len(errors)) if errors
                                                   else "", destination))
    return [r for _, r in results], [e for _, e in errors]


def print_results(results: Sequence[Dict[str, Any]], log: Callable[[str], None] = print) -> None:
    log("{:<22} {:<13} {:>5}  {:>9}  {:>9}  {:>10}  {:>7}".format(
        "variant.prec.place", "scenario", "batch", "p50 ms", "p99 ms", "img/s", "top-1"))
    for result in results:
        labels = result.get("labels") or {}
        top1 = (result.get("accuracy") or {}).get("top1")
        name = layout.job_stem(str(labels.get("variant")), str(result.get("model", {}).get("precision")),
                               str(labels.get("placement")))
        for row in result_rows(result):
            log("{:<22} {:<13} {:>5}  {:>9.3f}  {:>9.3f}  {:>10.1f}  {:>7}".format(
                name, row["scenario"], row["batch"], row["p50_ms"], row["p99_ms"], row["throughput"] or 0.0,
                "{:.2f}%".format(top1) if top1 is not None else "-"))


def print_failures(errors: Sequence[Dict[str, Any]], log: Callable[[str], None] = print) -> None:
    for error in errors:
        log("[failed] {} ({}): edgekit: error: {}".format(error["stem"], error["stage"], error["message"]))


def refresh_dashboard(results_root: str, page: str, log: Callable[[str], None] = print) -> None:
    """The last of [fetch]: the page from every stored result, the ones just fetched and failed included."""
    from ..report.dashboard import describe, write_dashboard

    for line in describe(write_dashboard(results_root, page)):
        log(line)


def deploy(artifacts: str, target: Target, target_file: str, reached: Reached, recipe: Optional[str] = None,
           results_root: str = "benchmarks/results", seconds: float = 1.0, dashboard: Optional[str] = None,
           log: Callable[[str], None] = print) -> List[Dict[str, Any]]:
    """Steps 3-6 above, for host stages already run into `artifacts`. Returns the stored results;
    raises EdgekitError (after storing everything and refreshing the `dashboard` page, when given)
    when a job failed."""
    transport, facts = reached.transport, reached.facts
    recipe = recipe or os.path.basename(os.path.normpath(artifacts))
    variants = bundle_variants(artifacts)
    bundle = os.path.abspath(os.path.join(artifacts, layout.BUNDLE_DIR))
    files = build_bundle(artifacts, target, target_file, bundle, variants, wheel=reached.wheel, log=log)
    jobs = plan_jobs(target, variants)
    # A changed power mode or measuring time invalidates what an interrupted run left on the device.
    fingerprint = bundle_fingerprint(bundle, files, seconds, facts.get("nvpmodel"))
    files.append(write_jobs_file(bundle, jobs_document(target, jobs, recipe, fingerprint, seconds)))
    transport.put(bundle, files, facts.get("sha256sum") == "yes", log)

    wheel = next((f for f in files if f.endswith(".whl")), None)
    command = device_command(reached.python, wheel)
    where = "{} in {} (--runtime nvidia)".format(transport.label, target.image) if target.launch == "docker" \
        else "{} (target {})".format(transport.label, target.name)
    if target.launch == "docker":
        command = docker_command(target, transport.workdir, command)
    log("[run] {} measurement(s) {}{}".format(len(jobs), "" if isinstance(transport, Local) else "on ", where))
    proc = transport.run(command, "running the benchmarks on {}".format(transport.label), timeout=RUN_TIMEOUT,
                         capture=False, check=False)

    staging = os.path.join(results_root, ".incoming-{}".format(target.name))
    shutil.rmtree(staging, ignore_errors=True)
    log("[fetch] results <- {}".format(transport.label))
    names = transport.list_results()
    names += deliverables.fetched_trees(names)
    transport.fetch(names, staging)
    results, errors = store_fetched(staging, os.path.join(results_root, target.name), recipe, facts, log)
    deliverables.fetch_handoffs(transport, results_root, target, recipe, log)
    transport.clear(names)
    print_results(results, log)
    print_failures(errors, log)
    if dashboard:
        refresh_dashboard(results_root, dashboard, log)
    if errors:
        raise EdgekitError("{} of {} job(s) failed on {}: {} (reasons above; the others are stored)".format(
            len(errors), len(jobs), transport.label, ", ".join(e["stem"] for e in errors)))
    checked(proc, "running the benchmarks on {}".format(transport.label))
    return results
