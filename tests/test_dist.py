"""DDP under torchrun with 2 gloo processes on the CPU, and the world-size independent checkpoint."""

import json
import os
import subprocess
import sys

import pytest
import torch

from edgekit.device.layout import BUNDLE_DIR
from edgekit.errors import EdgekitError
from edgekit.host.dist import Dist, current, resolve_device, setup
from edgekit.recipe import load_recipe

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ddp_worker.py")
AUDIT_SITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "audit_site")
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")


def _run(args, nproc=None, cwd=None):
    return _run_script(WORKER, args, nproc, cwd)


def _run_script(script, args, nproc=None, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if nproc:
        cmd = [TORCHRUN, "--standalone", "--nproc_per_node={}".format(nproc), script, *args]
    else:
        cmd = [sys.executable, script, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _report(folder, rank):
    with open(os.path.join(folder, "rank{}.json".format(rank)), encoding="utf-8") as f:
        return json.load(f)


def test_single_process_dist_is_a_no_op():
    d = Dist()
    assert d.is_writer and not d.distributed
    d.barrier()
    assert d.broadcast_object({"a": 1}) == {"a": 1}
    assert d.on_writer(lambda: 7) == 7
    t = torch.tensor([2.0, 4.0])
    assert d.all_reduce_mean(t).tolist() == [2.0, 4.0]
    assert resolve_device("cpu").type == "cpu"


def test_setup_without_torchrun_is_one_process(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    d = setup(load_recipe("digits", ["train.device=cpu", "train.precision=bf16"]))
    try:
        assert current() is d and d.world_size == 1 and not d.distributed
        assert d.device.type == "cpu" and d.train.precision == "bf16"   # the loop's defaults from now on
    finally:
        d.cleanup()
    assert current().device is None and current().train is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_asking_for_cuda_without_one_is_a_user_error():
    with pytest.raises(EdgekitError, match="train.device is cuda"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_torchrun_two_gloo_processes(tmp_path):
    out, rep = str(tmp_path / "out"), str(tmp_path / "rep")
    log = _run([out, rep, "2"], nproc=2, cwd=str(tmp_path))
    r0, r1 = _report(rep, 0), _report(rep, 1)
    assert (r0["world_size"], r0["backend"], r1["backend"]) == (2, "gloo", "gloo")
    # Metrics are all-reduced: both ranks hold the same history, and the epoch's top-1 is the
    # whole val split's (rank 0 re-scores the final model alone, over all of it).
    strip = [[{k: v for k, v in h.items() if k != "seconds"} for h in r["history"]] for r in (r0, r1)]
    assert strip[0] == strip[1] and len(strip[0]) == 2
    assert r0["history"][-1]["val_top1"] == pytest.approx(r0["full_top1"], abs=1e-3)
    # ... with rank 0's BatchNorm statistics on every rank (DDP leaves each rank its own after a step)
    assert r0["bn_running_mean"] == r1["bn_running_mean"]
    # DistributedSampler: per epoch the two ranks' samples are disjoint and cover the set (128
    # images, 64 per rank); the order changes between epochs (set_epoch).
    per_epoch = 64
    for e in range(2):
        a = r0["seen"][e * per_epoch:(e + 1) * per_epoch]
        b = r1["seen"][e * per_epoch:(e + 1) * per_epoch]
        assert len(a) == len(b) == per_epoch
        assert not set(a) & set(b) and len(set(a) | set(b)) == 128
    assert r0["seen"][:per_epoch] != r0["seen"][per_epoch:]
    # Rank 1 writes nothing into the output folder; rank 0 writes the checkpoint; one log.
    assert r1["writes"] == []
    assert any(p.endswith("job.train.pt") for _, p in r0["writes"])
    assert os.listdir(out) == ["job.train.pt"]
    assert log.count("ddp epoch 2/2") == 1
    assert "x 2 processes" in log


def test_interrupted_two_process_run_resumes_in_one_process(tmp_path):
    out, rep2, rep1 = str(tmp_path / "out"), str(tmp_path / "rep2"), str(tmp_path / "rep1")
    _run([out, rep2, "3", "1"], nproc=2, cwd=str(tmp_path))  # stops in epoch 2 of 3
    assert _report(rep2, 0)["stopped"] and _report(rep2, 1)["stopped"]
    state = torch.load(os.path.join(out, "job.train.pt"), weights_only=True)
    assert state["epoch"] == 0
    # linear scaling: 2 processes ran at twice the per-process rate
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.1)
    first_epoch = state["history"][0]

    log = _run([out, rep1, "3"], cwd=str(tmp_path))
    assert "resuming after epoch 1/3" in log
    r = _report(rep1, 0)
    assert r["world_size"] == 1 and not r["stopped"]
    assert [h["epoch"] for h in r["history"]] == [1, 2, 3]
    assert r["history"][0] == first_epoch
    # one process: 8 steps per epoch instead of 4, the rate of one process
    assert len(r["seen"]) == 2 * 128
    state = torch.load(os.path.join(out, "job.train.pt"), weights_only=True)
    assert state["epoch"] == 2 and state["world_size"] == 1
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.05)


@pytest.mark.slow
def test_the_digits_pipeline_under_torchrun_two_processes(tmp_path, tiny_run):
    """The host stages on 2 gloo processes: rank 0 alone writes, the artifacts are the single
    process's, the student meets its MACs target."""
    from conftest import TINY

    out = str(tmp_path / "digits")
    sets = [arg for item in TINY for arg in ("--set", item)]
    env = dict(os.environ, OMP_NUM_THREADS="1", EDGEKIT_AUDIT_OUT=out,
               PYTHONPATH=os.pathsep.join([AUDIT_SITE, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "edgekit.cli", "run",
                           "--recipe", "digits", "--out", out, *sets],
                          capture_output=True, text=True, timeout=600, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout
    with open(os.path.join(out, "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    with open(out + ".rank1.json", encoding="utf-8") as f:
        rank1 = json.load(f)
    with open(out + ".rank0.json", encoding="utf-8") as f:
        rank0 = json.load(f)
    assert rank1["world_size"] == 2 and rank1["writes"] == []
    assert any(p.endswith("summary.json") for _, p in rank0["writes"])
    single_out = tiny_run[0]

    def files(folder):
        found = set()
        for root, dirs, names in os.walk(folder):
            dirs[:] = [d for d in dirs if d != BUNDLE_DIR]  # a deploy test may have staged a bundle in tiny_run's
            for name in names:
                rel = os.path.relpath(os.path.join(root, name), folder)
                if not name.endswith(".lock"):
                    found.add(rel)
        return found

    assert files(out) == files(single_out)
    target = summary["recipe_config"]["prune"]["target_macs_ratio"]
    assert summary["student"]["macs_ratio"] <= target + 1e-6
    assert summary["train"]["world_size"] == 2 and summary["train"]["device"] == "cpu"
    assert summary["train"]["precision"] == "fp32" and summary["teacher"]["train"]["world_size"] == 2
    assert tiny_run[1]["train"]["world_size"] == 1
    assert log.count("teacher epoch 1/1") == 1  # one rank logs
    assert "x 2 processes" in log and "(2 processes, gloo)" in log
