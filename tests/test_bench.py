import json
import os
import signal
import subprocess

import numpy as np
import pytest
from conftest import REPO, default_sigint, edgekit_cmd
from onnx_fixtures import linear_classifier
from test_power import jetpack5_tree, write

from edgekit.device.bench.environment import gpu_clocks, l4t_release, parse_nvpmodel
from edgekit.device.bench.harness import benchmark
from edgekit.device.bench.results import load_result, save_result, to_csv
from edgekit.device.bench.scenarios import offline, single_stream
from edgekit.device.bench.stats import latency_stats
from edgekit.device.runtime import OnnxRuntimeRunner
from edgekit.errors import EdgekitError


@pytest.fixture()
def tiny(tmp_path):
    path = tmp_path / "tiny.fp32.onnx"
    linear_classifier(path)
    return str(path)


def test_latency_stats_known_values():
    stats = latency_stats([i / 1000.0 for i in range(1, 101)])  # 1..100 ms
    assert stats["p50_ms"] == pytest.approx(50.5) and stats["p90_ms"] == pytest.approx(90.1)
    assert stats["p99_ms"] == pytest.approx(99.01) and stats["max_ms"] == 100.0 and stats["min_ms"] == 1.0
    assert stats["mean_ms"] == pytest.approx(50.5) and stats["std_ms"] == pytest.approx(29.0115, rel=1e-4)
    assert stats["count"] == 100


def test_single_stream_and_offline_measure_enough(tiny):
    with OnnxRuntimeRunner(tiny, threads=1) as runner:
        feed = {"input": np.zeros((1, 3, 8, 8), np.float32)}
        ss = single_stream(runner, feed, warmup=2, min_queries=30, min_seconds=0.2)
        off = offline(runner, lambda b: {"input": np.zeros((b, 3, 8, 8), np.float32)}, [1, 4, 16],
                      warmup=1, min_queries=5, min_seconds=0.1)
    lat = ss["latency"]
    assert ss["queries"] >= 30 and ss["seconds"] >= 0.2 and ss["batch"] == 1
    assert lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]
    assert [r["batch"] for r in off["rows"]] == [1, 4, 16]
    assert all(r["throughput"] > 0 and r["queries"] >= 5 for r in off["rows"])
    assert off["best_throughput"] == max(r["throughput"] for r in off["rows"])


def test_benchmark_writes_a_versioned_result_with_power_and_environment(tiny, tmp_path):
    jetpack5_tree(str(tmp_path / "sys-root"))
    out = str(tmp_path / "results" / "run.json")
    result = benchmark(tiny, out, threads=1, batches=[1, 2], warmup=1, min_queries=10, min_seconds=0.3,
                       power_root=str(tmp_path / "sys-root"), idle_seconds=0.2, progress=False, log=lambda m: None)
    on_disk = load_result(out)
    assert on_disk["run_id"] == result["run_id"] and on_disk["schema_version"] == 1
    assert on_disk["model"]["precision"] == "fp32" and len(on_disk["model"]["sha256"]) == 64
    assert on_disk["runtime"]["runtime"] == "onnxruntime"
    env = on_disk["environment"]
    for key in ("cpu", "python", "machine", "threads", "l4t", "nvpmodel", "jetson_clocks"):
        assert key in env
    power = on_disk["scenarios"]["single_stream"]["power"]
    assert power["status"] == "ok" and power["source"] == "ina3221-hwmon" and power["sample_hz"] >= 10
    assert set(power["rails_w"]) == {"GPU", "CPU", "SOC", "CV", "VDDRQ", "SYS5V"}
    assert power["mj_per_inference"] > 0 and power["inferences_per_joule"] > 0 and "idle_w" in power
    assert on_disk["scenarios"]["offline"]["rows"][1]["power"]["status"] == "ok"
    csv = to_csv([on_disk]).splitlines()
    assert csv[0].startswith("run_id,model,precision,runner,scenario,batch")
    assert len(csv) == 1 + 1 + 2  # header, single-stream, two offline batches


def test_power_unavailable_says_why(tiny, tmp_path):
    result = benchmark(tiny, None, scenarios=["single_stream"], warmup=1, min_queries=5, min_seconds=0.05,
                       power_root=str(tmp_path), progress=False, log=lambda m: None)
    power = result["scenarios"]["single_stream"]["power"]
    assert power["status"] == "unavailable" and "no INA3221 hwmon channels" in power["reason"]
    assert result["power_unavailable_reasons"]


def test_a_total_rail_the_board_lacks_leaves_power_unavailable_not_the_latency(tiny, tmp_path):
    """An AGX Xavier has no VDD_IN: a target asking for it gets latency, and power "unavailable" with why."""
    jetpack5_tree(str(tmp_path / "sys-root"))
    result = benchmark(tiny, None, scenarios=["single_stream"], warmup=1, min_queries=5, min_seconds=0.05,
                       power_root=str(tmp_path / "sys-root"), power_total="VDD_IN", idle_seconds=0.05,
                       progress=False, log=lambda m: None)
    power = result["scenarios"]["single_stream"]["power"]
    assert power["status"] == "unavailable" and "VDD_IN is not on this board" in power["reason"]
    assert result["scenarios"]["single_stream"]["latency"]["count"] >= 5
    assert result["power_total"]["rule"] == "none"


def test_result_files_are_validated(tmp_path):
    good = tmp_path / "good.json"
    latency = {"p50_ms": 1.0, "p90_ms": 1.1, "p99_ms": 1.5, "max_ms": 2.0, "mean_ms": 1.05}
    minimal = {"run_id": "x", "created": "2026-11-25T10:00:00+0000", "model": {"path": "m.onnx"},
               "scenarios": {"single_stream": {"batch": 1, "queries": 5, "latency": latency}}}
    save_result(str(good), minimal)
    assert load_result(str(good))["run_id"] == "x"
    for broken, problem in ((dict(minimal, scenarios={}), "no scenario results"),
                            (dict(minimal, model={}), "no model.path"),
                            (dict(minimal, scenarios={"single_stream": {"batch": 1, "queries": 5, "latency": dict(
                                latency, p99_ms="fast")}}), "single_stream latency.p99_ms is not a number"),
                            (dict(minimal, accuracy={"top1": None}), "accuracy.top1 is not a number")):
        save_result(str(tmp_path / "broken.json"), broken)
        with pytest.raises(EdgekitError, match=problem):
            load_result(str(tmp_path / "broken.json"))
    data = json.loads(good.read_text())
    data["schema_version"] = 99
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    with pytest.raises(EdgekitError, match="schema version 99"):
        load_result(str(old))
    cut = tmp_path / "cut.json"
    cut.write_text(good.read_text()[:20])
    with pytest.raises(EdgekitError, match="not valid JSON"):
        load_result(str(cut))


def test_environment_readers_on_a_fake_jetson(tmp_path):
    write(str(tmp_path / "etc/nv_tegra_release"),
          "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, "
          "DATE: Tue Aug  1 19:57:35 UTC 2023")
    assert l4t_release(str(tmp_path)) == "R35.4.1"
    gpu = tmp_path / "sys/class/devfreq/17000000.gv11b"
    for key, value in (("cur_freq", "1377000000"), ("min_freq", "1377000000"), ("max_freq", "1377000000")):
        write(str(gpu / key), value)
    clocks = gpu_clocks(str(tmp_path))
    assert clocks["locked"] and clocks["cur_freq"] == 1377000000 and clocks["device"] == "17000000.gv11b"
    assert parse_nvpmodel("NV Power Mode: MAXN\n0\n") == {"name": "MAXN", "id": "0"}
    assert parse_nvpmodel("NVPM WARN: ...") is None


def test_bench_cli_and_ctrl_c_leaves_no_partial_result(tiny, tmp_path):
    out = tmp_path / "r.json"
    csv = tmp_path / "r.csv"
    proc = subprocess.run(edgekit_cmd("bench", tiny, "--out", str(out), "--csv", str(csv), "--batches", "1,2",
                                      "--queries", "5", "--seconds", "0.1", "--warmup", "1", "--no-power"),
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "single-stream: p50" in proc.stdout and "best batch" in proc.stdout
    assert load_result(str(out))["power_unavailable_reasons"] == ["disabled (--no-power)"]
    assert len(csv.read_text().splitlines()) == 4

    bad = subprocess.run(edgekit_cmd("bench", tiny, "--batches", "1,x"), capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "--batches expects comma-separated integers" in bad.stderr

    slow = tmp_path / "slow.json"
    proc = subprocess.Popen(edgekit_cmd("bench", tiny, "--out", str(slow), "--seconds", "60", "--no-power"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            preexec_fn=default_sigint)
    for line in proc.stdout:
        if line.startswith("benchmark "):
            break
    proc.send_signal(signal.SIGINT)
    try:
        _, stderr = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        # A KeyboardInterrupt raised inside a finalizer is dropped by Python ("Exception ignored in"), as a
        # user's first Ctrl-C can be: a second one must still stop it cleanly.
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "Traceback" not in stderr
    # bench's own words: nothing of run's "finished stages and epochs are kept"
    assert stderr.strip().splitlines()[-1] == "edgekit: interrupted; no result was written (a result file is written " \
                                              "whole, once every scenario is measured): run the same command again"
    assert not slow.exists() and not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_each_window_reports_progress_in_order_and_ends_with_one_done_line(tiny):
    """A log gets only the done line (harness._progress_printer), so each window must give exactly one,
    last; the running reports before it only count up."""
    lines = []
    with OnnxRuntimeRunner(tiny, threads=1) as runner:
        offline(runner, lambda b: {"input": np.zeros((b, 3, 8, 8), np.float32)}, [1, 2, 4, 8], warmup=1,
                min_queries=1, min_seconds=0.5,
                progress=lambda label, queries, seconds, done=False: lines.append((label, queries, done)))
    for batch in (1, 2, 4, 8):
        mine = [(q, done) for label, q, done in lines if label == "offline batch {}".format(batch)]
        assert mine and [done for _, done in mine] == [False] * (len(mine) - 1) + [True], (batch, mine)
        counts = [q for q, _ in mine[:-1]]
        assert counts == sorted(set(counts)) and all(q <= mine[-1][0] for q in counts), (batch, mine)


def test_bench_records_the_accuracy_of_what_it_times(tiny, tmp_path):
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"recipe": "digits", "models": [{"path": "tiny.fp32.onnx", "top1": 97.5}]}))
    out = tmp_path / "r.json"
    args = ["--out", str(out), "--scenario", "single_stream", "--queries", "3", "--seconds", "0.05", "--no-power"]
    proc = subprocess.run(edgekit_cmd("bench", tiny, "--summary", str(summary), *args), capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "(top-1 97.50% on digits val)" in proc.stdout
    assert load_result(str(out))["accuracy"]["top1"] == 97.5
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"models": [{"path": "model.fp32.onnx", "top1": 90.0}]}))
    proc = subprocess.run(edgekit_cmd("bench", tiny, "--summary", str(other), *args), capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "lists no accuracy for tiny.fp32.onnx (models: model.fp32.onnx)" in proc.stderr


def test_runner_choice_says_why(tiny, tmp_path):
    from edgekit.device.bench.harness import choose_runner
    from edgekit.device.engine.metadata import EngineMetadata, save_metadata

    runtime, path, why = choose_runner(tiny)
    assert runtime == "onnxruntime" and path == tiny
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert why == "tensorrt is not installed here"
        # an engine built from this very ONNX exists, but without TensorRT onnxruntime still runs it
        engine = os.path.join(os.path.dirname(tiny), "tiny.fp32.gpu.engine")
        open(engine, "wb").close()
        from edgekit.artifacts import sha256_file

        save_metadata(engine, EngineMetadata.create(onnx_sha256=sha256_file(tiny), precision="fp32"))
        assert choose_runner(tiny)[0] == "onnxruntime"
        with pytest.raises(EdgekitError, match="and tensorrt is not installed here: run edgekit build-engine first"):
            choose_runner(tiny, "tensorrt")
    assert choose_runner(str(tmp_path / "m.engine"))[0] == "tensorrt"
    with pytest.raises(EdgekitError, match="the onnxruntime runner runs .onnx files, not "):
        choose_runner(str(tmp_path / "m.engine"), "onnxruntime")
    with pytest.raises(EdgekitError, match=r"no automatic runner opens .*m\.pt; name one with --runner: .*pytorch"):
        choose_runner(str(tmp_path / "m.pt"))


def _eval_set(path, w, b, n=10, image=8, right=7):
    """n images the tiny classifier gets right exactly `right` times (labels from numpy's own logits)."""
    x = np.random.RandomState(1).standard_normal((n, 3, image, image)).astype(np.float32)
    predicted = (x.reshape(n, -1) @ w + b).argmax(1)
    np.savez(str(path), images=x, labels=np.where(np.arange(n) < right, predicted, (predicted + 1) % 10))


def test_the_runner_scores_the_eval_set_itself(tmp_path):
    import onnx

    from edgekit.device.bench.accuracy import load_eval_set, score

    model = tmp_path / "tiny.fp32.onnx"
    w, b = linear_classifier(model)
    _eval_set(tmp_path / "eval.npz", w, b)
    images, labels, task = load_eval_set(str(tmp_path / "eval.npz"))
    assert (task.name, task.metric) == ("classification", "top1")
    with OnnxRuntimeRunner(str(model)) as runner:
        assert score(runner, images, labels, batch=4)["top1"] == 70.0
        assert score(runner, images, labels, batch=32) == dict(score(runner, images, labels, batch=1),
                                                               seconds=pytest.approx(0, abs=10))
    # an engine-like static batch of 4: 10 images go as 4 + 4 + 2 padded to 4, the padding not counted
    static = onnx.load(str(model))
    static.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    static.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 4
    onnx.save(static, str(tmp_path / "static.fp32.onnx"))
    with OnnxRuntimeRunner(str(tmp_path / "static.fp32.onnx")) as runner:
        assert score(runner, images, labels, batch=32) == dict(task="classification", metric="top1", top1=70.0,
                                                               images=10, seconds=pytest.approx(0, abs=10))


def test_bench_takes_its_own_top1_when_the_eval_set_is_the_whole_split(tmp_path):
    model = tmp_path / "tiny.fp32.onnx"
    w, b = linear_classifier(model)
    _eval_set(tmp_path / "eval.npz", w, b)
    summary = {"recipe": "digits", "models": [{"path": "tiny.fp32.onnx", "top1": 71.0, "runtime": "onnxruntime-cpu"}],
               "eval_set": {"file": "eval.npz", "images": 10, "of": 10, "top1": {"tiny.fp32.onnx": 70.0}}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    args = ["--summary", str(tmp_path / "summary.json"), "--eval", str(tmp_path / "eval.npz"), "--scenario",
            "single_stream", "--queries", "3", "--seconds", "0.05", "--no-power", "--warmup", "1"]
    out = tmp_path / "r.json"
    proc = subprocess.run(edgekit_cmd("bench", str(model), "--out", str(out), *args), capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "top-1 scored by this runner: 70.00% on 10 images (host tiny.fp32.onnx: 70.00%, +0.00 points)" \
        in proc.stdout and "(top-1 70.00% scored by this run on 10 images)" in proc.stdout
    accuracy = load_result(str(out))["accuracy"]
    assert (accuracy["top1"], accuracy["host_top1"], accuracy["runtime"]) == (70.0, 71.0, "onnxruntime")
    check = accuracy["device_check"]
    assert (check["images"], check["of"], check["reference_top1"], check["delta_points"]) == (10, 10, 70.0, 0.0)
    assert check["within_tolerance"] and check["reference_model"] == "tiny.fp32.onnx"

    # a subset of a larger split: the host's full-split top-1 stays, this run's figure is the check beside it
    summary["eval_set"].update(of=1000, top1={"tiny.fp32.onnx": 80.0})
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    proc = subprocess.run(edgekit_cmd("bench", str(model), "--out", str(out), *args), capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    accuracy = load_result(str(out))["accuracy"]
    assert accuracy["top1"] == 71.0 and "host_top1" not in accuracy
    assert accuracy["device_check"]["delta_points"] == -10.0 and not accuracy["device_check"]["within_tolerance"]

    # a broken or mismatched eval set: one line, exit 2, before any timing, no result written
    (tmp_path / "cut.npz").write_bytes((tmp_path / "eval.npz").read_bytes()[:300])
    np.savez(str(tmp_path / "wide.npz"), images=np.zeros((2, 3, 16, 16), np.float32), labels=np.zeros(2, np.int64))
    np.savez(str(tmp_path / "nolabels.npz"), images=np.zeros((2, 3, 8, 8), np.float32))
    for name, message in (("cut.npz", "is not a readable .npz"), ("missing.npz", "eval set not found"),
                          ("nolabels.npz", "has no 'labels' array"),
                          ("wide.npz", "the eval set's images are [3, 16, 16] but the model takes [?, 3, 8, 8]")):
        fresh = tmp_path / (name + ".json")
        bad = [a if a != str(tmp_path / "eval.npz") else str(tmp_path / name) for a in args]
        proc = subprocess.run(edgekit_cmd("bench", str(model), "--out", str(fresh), *bad), capture_output=True,
                              text=True, cwd=REPO, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, (name, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and not fresh.exists()
