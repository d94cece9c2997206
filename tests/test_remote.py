"""`make deploy TARGET=cpu DEVICE=<you>@127.0.0.1`: the whole remote path against a real OpenSSH server
on loopback, with a throw-away host key and client key (the "device" is this machine)."""

import getpass
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time

import pytest
from conftest import REPO, TINY, edgekit_cmd

from edgekit.bench.results import load_result
from edgekit.remote import Ssh, device_script
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
    args = sets + ["--known-hosts", sshd["known_hosts"], "--remote-python", sys.executable, "--results", results]
    return ["make", "-s", "deploy", "TARGET=cpu", "DEVICE=" + sshd["device"], "SSH_PORT={}".format(sshd["port"]),
            "SSH_KEY=" + sshd["key"], "OUT=" + tiny_out, "ARGS=" + " ".join(shlex.quote(a) for a in list(args) +
                                                                             list(extra))]


@pytest.mark.slow
def test_make_deploy_over_ssh_fetches_results_with_the_local_schema(tiny_run, sshd, tmp_path):
    out, summary, _ = tiny_run
    results = str(tmp_path / "results")
    proc = subprocess.run(_deploy_args(out, sshd, results), capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for step in ("[check] reaching", "[bundle]", "[copy] bundle", "[run] benchmarks", "[fetch] results"):
        assert step in proc.stdout
    fetched = sorted(os.listdir(os.path.join(results, "cpu")))
    assert fetched == ["model.fp32.json", "model.int8.cpu.json"]
    remote = load_result(os.path.join(results, "cpu", "model.int8.cpu.json"))
    assert remote["accuracy"]["top1"] == next(m["top1"] for m in summary["models"] if m["name"] == "int8.cpu")
    # the same schema as a local run of the same harness
    local_path = str(tmp_path / "local.json")
    subprocess.run(edgekit_cmd("bench", os.path.join(out, "model.int8.cpu.onnx"), "--summary",
                               os.path.join(out, "summary.json"), "--seconds", "0.1", "--queries", "5", "--out",
                               local_path), check=True, capture_output=True, cwd=REPO)
    local = load_result(local_path)
    assert set(remote) == set(local) and set(remote["scenarios"]) == set(local["scenarios"])
    assert remote["model"]["path"] == "model.int8.cpu.onnx"


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

    docker_target = tmp_path / "boxed.yaml"
    docker_target.write_text("name: boxed\nruntime: docker\nimage: edgekit/cpu\nplacements: [cpu]\n")
    args = [a for t in TINY for a in ("--set", t)]
    proc = subprocess.run(edgekit_cmd("deploy", "--target", str(docker_target), "--device", sshd["device"],
                                      "--ssh-port", str(sshd["port"]), "--ssh-key", sshd["key"], "--known-hosts",
                                      sshd["known_hosts"], "--out", out, "--results", str(results), *args),
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2 and "has no Docker; install docker and the nvidia container runtime" in proc.stderr
    assert sorted(os.listdir(str(results))) == ["cpu"]


def test_device_commands_quote_everything():
    xavier = load_target("xavier")
    script = device_script(xavier, "edgekit-deploy/my recipe; rm -rf ~", "python3")
    assert "cd 'edgekit-deploy/my recipe; rm -rf ~'" in script
    assert "build-engine model.int8.qdq.onnx --precision int8 --out model.int8.gpu.engine" in script
    assert "build-engine model.fp32.onnx --precision int8 --out model.int8.dla0.engine --timing-cache timing.cache " \
           "--dla 0 --calib calib.cache" in script
    assert "model.fp32.dla1" not in script  # DLA runs FP16/INT8 only
    ssh = Ssh("nvidia@xavier.local", 2222, None)
    assert ssh.ssh("true")[-2:] == ["nvidia@xavier.local", "true"] and "-p" in ssh.ssh("true")
    with pytest.raises(Exception, match="DEVICE must look like user@host"):
        Ssh("-oProxyCommand=evil")
