"""`make deploy TARGET=cpu DEVICE=<you>@127.0.0.1`: the whole remote path against a real OpenSSH server
on loopback, with a throw-away host key and client key (the "device" is this machine)."""

import getpass
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time

import pytest
from conftest import REPO, TINY, edgekit_cmd

from edgekit.device.bench.results import load_result
from edgekit.errors import EdgekitError
from edgekit.remote import Ssh, check_device, device_jobs, device_script, docker_command
from edgekit.targets import load_target

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def _deploy_args(tiny_out, sshd, results, extra=()):
    sets = [a for t in TINY for a in ("--set", t)]
    args = sets + ["--known-hosts", sshd["known_hosts"], "--remote-python", sys.executable, "--seconds", "0.2"]
    return ["make", "-s", "deploy", "TARGET=cpu", "DEVICE=" + sshd["device"], "SSH_PORT={}".format(sshd["port"]),
            "SSH_KEY=" + sshd["key"], "OUT=" + tiny_out, "RESULTS=" + results,
            "DASHBOARD=" + os.path.join(results, "dashboard.html"),
            "ARGS=" + " ".join(shlex.quote(a) for a in list(args) + list(extra))]


def _fetched(results, target="cpu"):
    """{variant.precision.placement: path} of the result files fetched for `target`."""
    folder = os.path.join(results, target)
    found = {}
    for name in sorted(os.listdir(folder)):
        recipe, variant, precision, placement, run_id, ext = name.split(".")
        assert (recipe, ext) == ("digits", "json") and len(run_id) == 22, name
        found["{}.{}.{}".format(variant, precision, placement)] = os.path.join(folder, name)
    return found


@pytest.mark.slow
def test_make_deploy_over_ssh_fetches_results_with_the_local_schema(tiny_run, sshd, tmp_path):
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
    remote_results = os.path.join(os.path.expanduser("~" + getpass.getuser()), "edgekit-deploy", "digits", "results")
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
def test_a_failing_job_is_named_and_the_others_are_still_filed(tiny_run, tmp_path):
    from edgekit.remote import deploy
    from edgekit.targets import resolve_target_path

    out, _, _ = tiny_run
    broken = str(tmp_path / "digits")
    shutil.copytree(out, broken, ignore=shutil.ignore_patterns("device_bundle"))
    with open(os.path.join(broken, "model.fp16.onnx"), "wb") as f:
        f.write(b"not an onnx model")
    results = str(tmp_path / "results")
    lines = []
    with pytest.raises(EdgekitError, match=r"running the benchmarks failed: jobs failed: student\.fp16\.cpu"):
        deploy(broken, load_target("cpu"), resolve_target_path("cpu"), results_root=results, seconds=0.05,
               log=lines.append)
    assert sorted(_fetched(results)) == ["round1.fp32.cpu", "student.fp32.cpu", "student.int8.cpu",
                                         "teacher.fp32.cpu"]
    assert any(line.startswith("[fetch] 4 result file(s)") for line in lines)


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


def test_what_each_target_measures():
    jobs = {j.stem: j for j in device_jobs(load_target("xavier"), ["teacher", "round1"])}
    assert sorted(jobs) == ["round1.fp16.gpu", "student.fp16.dla0", "student.fp16.dla1", "student.fp16.gpu",
                            "student.int8.dla0", "student.int8.dla1", "student.int8.gpu", "teacher.fp16.gpu"]
    assert jobs["student.int8.gpu"].source == "model.int8.qdq.onnx"  # explicit Q/DQ on the GPU
    assert jobs["student.int8.dla0"].source == "model.fp32.onnx"  # implicit INT8 + calib.cache on DLA
    assert jobs["teacher.fp16.gpu"].source == "variants/teacher.fp32.onnx"
    cpu = [j.stem for j in device_jobs(load_target("cpu"), ["teacher"])]
    assert cpu == ["student.fp32.cpu", "student.fp16.cpu", "student.int8.cpu", "teacher.fp32.cpu"]


def test_device_commands_quote_everything():
    xavier = load_target("xavier")
    script = device_script(xavier, "edgekit-deploy/my recipe; rm -rf ~", "python3", ["teacher"])
    assert "cd 'edgekit-deploy/my recipe; rm -rf ~'" in script
    assert "build-engine model.int8.qdq.onnx --precision int8 --out engines/student.int8.gpu.engine " \
           "--timing-cache timing.cache --max-batch 32" in script
    assert "build-engine model.fp32.onnx --precision int8 --out engines/student.int8.dla0.engine --timing-cache " \
           "timing.cache --max-batch 32 --dla 0 --calib calib.cache" in script
    assert "build-engine variants/teacher.fp32.onnx --precision fp16 --out engines/teacher.fp16.gpu.engine" in script
    assert "fp32.dla1" not in script  # DLA runs FP16/INT8 only
    # an INT8 engine's top-1 is the Q/DQ model's (same calibration); a DLA FP16 engine's the FP16 model's
    assert "bench engines/student.int8.dla1.engine --summary summary.json --accuracy-from model.int8.qdq.onnx" in script
    assert "bench engines/student.fp16.dla0.engine --summary summary.json --accuracy-from model.fp16.onnx" in script
    assert "|| { echo 'edgekit: job student.fp16.gpu failed (above)' >&2; failed=\"$failed \"student.fp16.gpu; }" \
        in script
    assert script.endswith('if [ -n "$failed" ]; then echo "jobs failed:$failed" >&2; exit 3; fi')
    assert "if [ -s results/student.int8.gpu.json ]; then echo '[run] student.int8.gpu already measured, kept'" \
        in script
    # Inside the image: the same script, at /work, passed to sh -c as one quoted word.
    wrapped = docker_command(xavier, "edgekit-deploy/digits", device_script(xavier, "/work", "python3"))
    cd, remove, run = wrapped.split(" && ", 2)
    assert cd == "cd edgekit-deploy/digits"
    # a container left measuring by a dropped connection is removed before the new one starts
    assert remove == "{ docker rm -f edgekit-digits >/dev/null 2>&1 || true; }"
    words = shlex.split(run)
    assert words[:7] == ["docker", "run", "--rm", "--name", "edgekit-digits", "--runtime", "nvidia"]
    assert words[words.index("--entrypoint") + 1:words.index("--entrypoint") + 4] == [
        "/bin/sh", "edgekit/jetson:r35.4.1", "-c"]
    assert words[-1] == device_script(xavier, "/work", "python3")
    ssh = Ssh("nvidia@xavier.local", 2222, None)
    assert ssh.ssh("true")[-2:] == ["nvidia@xavier.local", "true"] and "-p" in ssh.ssh("true")
    with pytest.raises(Exception, match="DEVICE must look like user@host"):
        Ssh("-oProxyCommand=evil")


XAVIER_OK = {"arch": "aarch64", "free_kb": str(20 << 20), "l4t": "# R35 (release), REVISION: 4.1, GCID: 33958178",
             "nvpmodel": "NV Power Mode: MAXN 0", "docker": '{"io.containerd.runc.v2":{},"nvidia":{"path":"x"}}',
             "image": "yes", "sha256sum": "yes"}


@pytest.mark.parametrize("change, message", [
    ({"docker": "none"}, "has no Docker; install docker and the nvidia container runtime"),
    ({"docker": "permission denied while trying to connect"}, "may not use Docker; add it to the docker group"),
    ({"docker": "down: Cannot connect to the Docker daemon"}, "has Docker but its daemon does not answer"),
    # `docker info --format` prints null on stdout before the error on stderr: only the error is shown
    ({"docker": "down: null Cannot connect to the Docker daemon"}, "does not answer (Cannot connect to the Docker"),
    ({"docker": '{"runc":{}}'}, "Docker has no nvidia runtime; install nvidia-container-toolkit"),
    ({"l4t": "# R32 (release), REVISION: 7.4"}, "runs # R32 (release), REVISION: 7.4 but target xavier is for L4T "
                                                "R35.4.1"),
    ({"l4t": ""}, "runs no L4T but target xavier"),
    ({"image": "no"}, "has no image edgekit/jetson:r35.4.1; build it there first: make docker-jetson"),
    ({"free_kb": "102400"}, "has 100 MiB free in its home folder"),
    ({"arch": "x86_64"}, "target xavier is aarch64 but nvidia@xavier is x86_64"),
])
def test_device_checks_refuse_with_the_reason(change, message):
    xavier = load_target("xavier")
    check_device(xavier, "nvidia@xavier", XAVIER_OK)  # a ready Xavier passes
    with pytest.raises(EdgekitError, match=re.escape(message)):
        check_device(xavier, "nvidia@xavier", dict(XAVIER_OK, **change))
