"""`make deploy TARGET=cpu DEVICE=<you>@127.0.0.1`: the whole remote path against a real OpenSSH server
on loopback, with a throw-away host key and client key (the "device" is this machine)."""

import getpass
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time

import pytest
from conftest import REPO, TINY, edgekit_cmd

from edgekit.deploy import deploy, reach, transport_for
from edgekit.deploy.transport import Local, Ssh
from edgekit.device import layout
from edgekit.device.bench.results import load_result
from edgekit.errors import EdgekitError
from edgekit.targets import load_target, resolve_target_path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def remote_root(tmp_path_factory):
    """The "device" is this machine: deploys over SSH go to a private folder, not ~/edgekit-deploy (the
    deploy subprocesses inherit the variable)."""
    root = str(tmp_path_factory.mktemp("remote-home") / "edgekit-deploy")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGEKIT_REMOTE_ROOT", root)
        yield root


def test_deploys_go_under_the_remote_root(remote_root):
    transport = transport_for(load_target("cpu"), "digits", "artifacts/digits", "nvidia@xavier.local")
    assert transport.workdir == remote_root + "/digits"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if not os.path.exists(SSHD):
        pytest.skip("OpenSSH server not installed (.ci/run installs openssh-server)")
    home = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "id"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / name)], check=True)
    (home / "authorized_keys").write_text((home / "id.pub").read_text())
    os.chmod(str(home / "authorized_keys"), 0o600)
    port = _free_port()
    config = home / "sshd_config"
    config.write_text("\n".join([
        "Port {}".format(port), "ListenAddress 127.0.0.1", "HostKey {}".format(home / "host_key"),
        "AuthorizedKeysFile {}".format(home / "authorized_keys"), "PidFile {}".format(home / "sshd.pid"),
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
        "PermitRootLogin prohibit-password", "StrictModes no", "UsePAM no",
        "Subsystem sftp internal-sftp", ""]))
    os.makedirs("/run/sshd", exist_ok=True)  # privilege-separation directory sshd insists on
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 10
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("sshd did not start: {}".format(proc.stderr.read()))
    yield {"port": port, "key": str(home / "id"), "known_hosts": str(home / "known_hosts"),
           "device": "{}@127.0.0.1".format(getpass.getuser())}
    proc.terminate()
    proc.wait(timeout=10)


def _deploy_args(tiny_out, sshd, results, extra=(), python=sys.executable):
    sets = [a for t in TINY for a in ("--set", t)]
    args = sets + ["--known-hosts", sshd["known_hosts"], "--seconds", "0.2"]
    return ["make", "-s", "deploy", "TARGET=cpu", "DEVICE=" + sshd["device"], "SSH_PORT={}".format(sshd["port"]),
            "SSH_KEY=" + sshd["key"], "OUT=" + tiny_out, "RESULTS=" + results, "DEVICE_PYTHON=" + python,
            "DASHBOARD=" + os.path.join(results, "dashboard.html"),
            "ARGS=" + " ".join(shlex.quote(a) for a in list(args) + list(extra))]


def _fetched(results, target="cpu"):
    """{variant.precision.placement: path} of the result files fetched for `target`."""
    folder = os.path.join(results, target)
    found = {}
    for name in sorted(os.listdir(folder)):
        labels = layout.parse_result_name(name)
        assert labels and labels.recipe == "digits" and len(labels.run_id) == 22, name
        if not labels.error:
            found[layout.job_stem(labels.variant, labels.precision, labels.placement)] = os.path.join(folder, name)
    return found


@pytest.mark.slow
def test_make_deploy_over_ssh_fetches_results_with_the_local_schema(tiny_run, sshd, tmp_path, remote_root):
    out, summary, _ = tiny_run
    results = str(tmp_path / "results")
    proc = subprocess.run(_deploy_args(out, sshd, results), capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for step in ("[check] reaching", "[bundle]", "[copy] ", "[run] 5 measurement(s) on", "[fetch] 5 result file(s)",
                 "dashboard: 5 runs"):
        assert step in proc.stdout
    fetched = _fetched(results)
    # the student at the three precisions, the teacher and the one intermediate round of the 2-round spiral
    assert sorted(fetched) == ["round1.fp32.cpu", "student.fp16.cpu", "student.fp32.cpu", "student.int8.cpu",
                               "teacher.fp32.cpu"]
    remote = load_result(fetched["student.int8.cpu"])
    assert remote["accuracy"]["top1"] == next(m["top1"] for m in summary["models"] if m["name"] == "int8.cpu")
    assert load_result(fetched["teacher.fp32.cpu"])["accuracy"]["host_top1"] == summary["teacher"]["top1"]
    # every job scored the host's eval images itself (here the whole val split), and agrees with the host
    for stem, path in fetched.items():
        accuracy = load_result(path)["accuracy"]
        check = accuracy["device_check"]
        assert check["images"] == check["of"] == summary["eval_set"]["images"], stem
        assert check["delta_points"] == 0.0 and check["within_tolerance"], stem
        assert accuracy["top1"] == check["top1"] == summary["eval_set"]["top1"][check["reference_model"]], stem
    assert remote["labels"] == {"variant": "student", "target": "cpu", "placement": "cpu", "recipe": "digits"}
    assert os.path.getsize(os.path.join(results, "dashboard.html")) > 1_000_000  # plotly.js inlined
    # the same schema as a local run of the same harness
    local_path = str(tmp_path / "local.json")
    subprocess.run(edgekit_cmd("bench", os.path.join(out, "model.int8.cpu.onnx"), "--summary",
                               os.path.join(out, "summary.json"), "--seconds", "0.1", "--queries", "5", "--out",
                               local_path), check=True, capture_output=True, cwd=REPO)
    local = load_result(local_path)
    assert set(remote) == set(local) and set(remote["scenarios"]) == set(local["scenarios"])
    assert remote["model"]["path"] == "model.int8.cpu.onnx"

    # Resume: a deploy interrupted after the device measured one job but before the host fetched it.
    # The re-run copies nothing (the device has every file), keeps that measurement and fetches it.
    remote_results = os.path.join(remote_root, "digits", "results")
    kept = load_result(fetched["teacher.fp32.cpu"])
    kept["run_id"] = "20260101-000000-abcdef"
    with open(os.path.join(remote_results, "teacher.fp32.cpu.json"), "w") as f:
        json.dump(kept, f)
    proc = subprocess.run(_deploy_args(out, sshd, results), capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "(summary.json; the rest are there)" in proc.stdout  # only the rewritten summary travels again
    assert "[run] teacher.fp32.cpu already measured, kept" in proc.stdout
    assert os.path.exists(os.path.join(results, "cpu", "digits.teacher.fp32.cpu.20260101-000000-abcdef.json"))
    assert len(os.listdir(os.path.join(results, "cpu"))) == 10  # history: the first run's files stay
    assert [n for n in os.listdir(remote_results) if n.endswith(".json")] == []  # fetched, so cleared there


@pytest.mark.slow
def test_make_deploy_without_a_device_runs_the_same_device_script_here(tiny_run, tmp_path):
    out, summary, _ = tiny_run
    results = str(tmp_path / "results")
    args = [a for t in TINY for a in ("--set", t)] + ["--seconds", "0.1"]
    proc = subprocess.run(["make", "-s", "deploy", "OUT=" + out, "RESULTS=" + results,
                           "DASHBOARD=" + str(tmp_path / "dash.html"), "ARGS=" + " ".join(args)],
                          capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "[run] 5 measurement(s) here (target cpu)" in proc.stdout and "dashboard: 5 runs" in proc.stdout
    fetched = _fetched(results)
    assert sorted(fetched) == ["round1.fp32.cpu", "student.fp16.cpu", "student.fp32.cpu", "student.int8.cpu",
                               "teacher.fp32.cpu"]
    assert load_result(fetched["round1.fp32.cpu"])["accuracy"]["top1"] == summary["rounds"][0]["top1"]
    assert os.path.getsize(str(tmp_path / "dash.html")) > 1_000_000
    # the bundle here is hard links, not copies: it costs no disk
    bundle = os.path.join(out, "device_bundle")
    assert os.path.samefile(os.path.join(bundle, "model.fp32.onnx"), os.path.join(out, "model.fp32.onnx"))


@pytest.mark.slow
def test_a_failing_job_says_why_and_the_others_are_measured_and_stored(tiny_run, tmp_path):
    out, _, _ = tiny_run
    broken = str(tmp_path / "digits")
    shutil.copytree(out, broken, ignore=shutil.ignore_patterns("device_bundle"))
    with open(os.path.join(broken, "model.fp16.onnx"), "wb") as f:
        f.write(b"not an onnx model")
    results = str(tmp_path / "results")
    target = load_target("cpu")
    lines = []
    reached = reach(target, transport_for(target, "digits", broken, None), sys.executable, log=lines.append)
    with pytest.raises(EdgekitError, match=r"^1 of 5 job\(s\) failed on here: student\.fp16\.cpu \(reasons above"):
        deploy(broken, target, resolve_target_path("cpu"), reached, recipe="digits", results_root=results,
               seconds=0.05, dashboard=str(tmp_path / "dash.html"), log=lines.append)
    # the job's own error line, from the bench step that failed on the device
    assert "[failed] student.fp16.cpu (bench): edgekit: error: model.fp16.onnx is not a valid ONNX model for " \
           "onnxruntime" in "\n".join(lines)
    assert any(line.startswith("[fetch] 4 result file(s), 1 failure(s)") for line in lines)
    # [fetch] ends with the dashboard, refreshed by deploy itself before it reports the failure
    assert any(line.startswith("dashboard: 4 runs -> " + str(tmp_path / "dash.html")) for line in lines)
    assert any(line.startswith("failed: cpu student.fp16.cpu at bench") for line in lines)
    assert os.path.getsize(str(tmp_path / "dash.html")) > 1_000_000
    assert sorted(_fetched(results)) == ["round1.fp32.cpu", "student.fp32.cpu", "student.int8.cpu",
                                         "teacher.fp32.cpu"]
    (error_file,) = [n for n in os.listdir(os.path.join(results, "cpu")) if n.endswith(".error.json")]
    assert error_file.startswith("digits.student.fp16.cpu.")
    assert [n for n in os.listdir(os.path.join(broken, "device_bundle", "results")) if n.endswith(".json")] == []
    # the failure is in the results store: `edgekit results` and the dashboard's data show it with the reason
    proc = subprocess.run(edgekit_cmd("results", "--results", results), capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    failed = [line for line in proc.stdout.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and " cpu student.fp16.cpu at bench " in failed[0]
    assert "model.fp16.onnx is not a valid ONNX model" in failed[0] and "4 of 4 runs, 1 failed job(s)" in proc.stdout
    from edgekit.report.dashboard import page_data

    data = page_data(results)
    assert len(data["runs"]) == 4 and data["problems"] == []
    (failure,) = data["failures"]
    assert (failure["recipe"], failure["variant"], failure["precision"], failure["placement"], failure["stage"]) == (
        "digits", "student", "fp16", "cpu", "bench")
    assert failure["message"].startswith("model.fp16.onnx is not a valid ONNX model")


@pytest.mark.slow
def test_unreachable_device_and_missing_docker_are_one_line_and_touch_nothing(tiny_run, sshd, tmp_path):
    out, _, _ = tiny_run
    results = tmp_path / "results"
    (results / "cpu").mkdir(parents=True)
    keep = results / "cpu" / "earlier.json"
    keep.write_text("{}")
    closed = dict(sshd, port=_free_port())
    proc = subprocess.run(_deploy_args(out, closed, str(results)), capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("edgekit: error:")]
    assert len(errors) == 1 and "reaching {} over SSH failed".format(sshd["device"]) in errors[0]
    assert sorted(os.listdir(str(results / "cpu"))) == ["earlier.json"] and keep.read_text() == "{}"
    assert "[host]" not in proc.stdout  # the device is checked before any host stage runs

    docker_target = tmp_path / "boxed.yaml"
    docker_target.write_text("name: boxed\nruntime: docker\nimage: edgekit/cpu\nplacements: [cpu]\n")
    args = [a for t in TINY for a in ("--set", t)]
    proc = subprocess.run(edgekit_cmd("deploy", "--target", str(docker_target), "--device", sshd["device"],
                                      "--ssh-port", str(sshd["port"]), "--ssh-key", sshd["key"], "--known-hosts",
                                      sshd["known_hosts"], "--out", out, "--results", str(results), *args),
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    # This machine has no Docker engine: either no client at all, or a client whose daemon does not answer.
    expected = ("has Docker but its daemon does not answer" if shutil.which("docker")
                else "has no Docker; install docker")
    assert proc.returncode == 2 and expected in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "[host]" not in proc.stdout
    assert sorted(os.listdir(str(results))) == ["cpu"]


@pytest.fixture(scope="module")
def python_without_onnxruntime(tmp_path_factory):
    """A venv of this Python that sees numpy and pyyaml (linked in via a .pth folder) but no onnxruntime."""
    home = tmp_path_factory.mktemp("devpy")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(home / "venv")], check=True)
    shared = home / "shared"
    shared.mkdir()
    import numpy
    import yaml

    for module in (numpy, yaml):
        folder = os.path.dirname(module.__file__)
        os.symlink(folder, str(shared / os.path.basename(folder)))
        libs = folder + ".libs"  # numpy's bundled shared libraries, where the wheel has them
        if os.path.isdir(libs):
            os.symlink(libs, str(shared / os.path.basename(libs)))
    python = str(home / "venv" / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, "shared.pth"), "w") as f:
        f.write(str(shared) + "\n")
    probe = subprocess.run([python, "-c", "import numpy, yaml\ntry:\n import onnxruntime\nexcept ImportError:\n"
                            " print('no ort')"], capture_output=True, text=True)
    assert probe.stdout.strip() == "no ort", probe.stderr
    return python


@pytest.mark.slow
def test_a_device_python_without_onnxruntime_stops_at_check_in_seconds(tiny_run, sshd, tmp_path, remote_root,
                                                                       python_without_onnxruntime):
    out, _, _ = tiny_run
    results = str(tmp_path / "results")
    remote_dir = os.path.join(remote_root, "digits")
    shutil.rmtree(remote_dir, ignore_errors=True)
    started = time.time()
    args = [a for t in TINY for a in ("--set", t)]
    proc = subprocess.run(edgekit_cmd("deploy", "--target", "cpu", "--device", sshd["device"], "--ssh-port",
                                      str(sshd["port"]), "--ssh-key", sshd["key"], "--known-hosts", sshd["known_hosts"],
                                      "--device-python", python_without_onnxruntime, "--out", out, "--results", results,
                                      *args), capture_output=True, text=True, cwd=REPO, timeout=300)
    seconds = time.time() - started
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert errors == ["edgekit: error: {}'s Python ({}) has no onnxruntime, which the onnxruntime runner needs: "
                      "install it there: {} -m pip install onnxruntime (or point --device-python / python_bin at an "
                      "interpreter that has it)".format(
                          sshd["device"], python_without_onnxruntime, python_without_onnxruntime)]
    assert "[check] reaching" in proc.stdout and "[host]" not in proc.stdout and "[bundle]" not in proc.stdout
    assert not os.path.exists(remote_dir) and not os.path.exists(results)  # nothing copied, nothing fetched
    assert seconds < 60, seconds  # a cold `edgekit` start included; the check itself is one round trip


@pytest.mark.parametrize("kind", ["local", "ssh"])
def test_local_and_ssh_transports_run_the_same_flow(kind, request, tmp_path, remote_root):
    """put (only what changed), run in the work folder, list, fetch and clear results: one code path."""
    if kind == "ssh":
        sshd = request.getfixturevalue("sshd")
        there = os.path.join(remote_root, "transport-test")
        transport = Ssh(sshd["device"], there, sshd["port"], sshd["key"], known_hosts=sshd["known_hosts"])
    else:
        transport = Local(str(tmp_path / "device"))
        there = transport.workdir
    bundle = tmp_path / "bundle"
    (bundle / "variants").mkdir(parents=True)
    (bundle / "a.txt").write_text("a")
    (bundle / "variants" / "b.onnx").write_text("b")
    files = ["a.txt", "variants/b.onnx"]
    lines = []
    try:
        assert transport.put(str(bundle), files, True, lines.append) == files
        assert transport.put(str(bundle), files, True, lines.append) == []  # a re-run sends nothing
        # the host replaces files (atomic writes), so a hard-linked bundle file is not changed in place
        (bundle / "a.new").write_text("changed")
        os.replace(str(bundle / "a.new"), str(bundle / "a.txt"))
        assert transport.put(str(bundle), files, True, lines.append) == ["a.txt"]
        assert lines[1] == "[copy] {} already has all 2 files".format(transport.label)
        transport.run("cat a.txt > {0}/x.json && echo e > {0}/x.error.json && echo n > {0}/note.txt".format(
            layout.RESULTS_DIR), "writing results")
        names = transport.list_results()
        assert names == ["results/x.error.json", "results/x.json"]
        transport.fetch(names, str(tmp_path / "fetched"))
        assert (tmp_path / "fetched" / "x.json").read_text() == "changed"
        transport.clear(names)
        assert sorted(os.listdir(os.path.join(there, "results"))) == ["note.txt"]
        failed = transport.run("exit 7", "a failing step", check=False)
        assert failed.returncode == 7
        with pytest.raises(EdgekitError, match="a failing step failed: exit status 7"):
            transport.run("exit 7", "a failing step")
    finally:
        if kind == "ssh":
            shutil.rmtree(there, ignore_errors=True)
