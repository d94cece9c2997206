"""`edgekit bench --harness loadgen`: the onnxruntime runner under the real MLPerf LoadGen (mlcommons-loadgen),
with LoadGen's minimums overridden to fractions of a second."""

import json
import os

import numpy as np
import pytest
from onnx_fixtures import linear_classifier

from edgekit.cli import main
from edgekit.device.bench import mlperf_logs
from edgekit.device.bench.results import load_result
from edgekit.errors import EdgekitError

lg = pytest.importorskip("mlperf_loadgen", reason="MLPerf LoadGen is not installed here: pip install "
                         "mlcommons-loadgen==6.0.17 (x86_64 wheels; a Jetson builds it from the sdist)")

QUICK = ["--queries", "40", "--seconds", "0.2", "--warmup", "3", "--threads", "1"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A linear classifier and 60 eval images whose labels are its own answers on 45 of them."""
    folder = tmp_path_factory.mktemp("loadgen")
    w, b = linear_classifier(folder / "model.fp32.onnx")
    rng = np.random.RandomState(1)
    images = rng.standard_normal((60, 3, 8, 8)).astype(np.float32)
    predicted = (images.reshape(60, -1) @ w + b).argmax(1)
    labels = predicted.copy()
    labels[45:] = (labels[45:] + 1) % 10  # 15 wrong: top-1 75% exactly
    np.savez(folder / "eval.npz", images=images, labels=labels)
    return folder


@pytest.fixture(scope="module")
def measured(tiny):
    """`edgekit bench --harness loadgen` once for the tests below: (result file, what it printed)."""
    import contextlib
    import io

    out, printed = tiny / "results" / "cpu" / "run.json", io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["bench", str(tiny / "model.fp32.onnx"), "--harness", "loadgen", "--eval",
                     str(tiny / "eval.npz"), "--batches", "1,4", "--out", str(out), "--target", "cpu", *QUICK])
    assert code == 0
    return out, printed.getvalue()


def test_single_stream_and_offline_are_valid_and_accuracy_comes_from_loadgens_log(measured):
    out, printed = measured
    result = load_result(str(out))
    assert result["harness"] == "loadgen" and result["loadgen"]["validity"] == "VALID"
    ss, off = result["scenarios"]["single_stream"], result["scenarios"]["offline"]
    assert ss["validity"] == "VALID" and ss["queries"] >= 40 and ss["batch"] == 1
    assert 0 < ss["latency"]["p50_ms"] <= ss["latency"]["p90_ms"] <= ss["latency"]["max_ms"]
    assert ss["early_stopping"]["met"] is True and ss["early_stopping"]["p90_ms"] >= ss["latency"]["p90_ms"] * 0.5
    assert off["batch"] == 4 and off["rows"][0]["throughput"] > 0 and off["rows"][0]["samples"] >= 40 * 4
    # AccuracyOnly in both scenarios: every image once, scored from mlperf_log_accuracy.json
    for scenario in ("single_stream", "offline"):
        measured = result["loadgen"]["accuracy"][scenario]
        assert measured["top1"] == 75.0 and measured["images"] == 60
        with open(measured["log"]) as f:
            assert len(json.load(f)) == 60
    assert result["loadgen"]["runner_top1"] == 75.0 and result["loadgen"]["accuracy_agrees"] is True
    # the Open-division-style tree, with LoadGen's own verdict in its summary
    root = result["loadgen"]["logs"]
    run_1 = mlperf_logs.run_folder(root, result["loadgen"]["system"], result["loadgen"]["model"], "single_stream",
                                   "performance")
    assert run_1.endswith(os.path.join("SingleStream", "performance", "run_1"))
    assert mlperf_logs.summary_validity(run_1) == "VALID"
    with open(mlperf_logs.system_path(root, result["loadgen"]["system"])) as f:
        assert json.load(f)["division"] == "open"
    assert "LoadGen SingleStream: p90" in printed


def test_multi_stream_runs_eight_samples_a_query_and_is_invalid_without_enough_queries_for_early_stopping(tiny):
    from edgekit.device.bench.loadgen import Settings, benchmark_loadgen

    result = benchmark_loadgen(str(tiny / "model.fp32.onnx"), str(tiny / "ms.json"), threads=1,
                               scenarios=["multi_stream"], modes=["performance"], log=lambda line: None,
                               settings=Settings(min_queries=30, min_seconds=0.1, warmup=2, multi_stream_queries=30,
                                                 max_queries=30))  # capped: a fast box must not reach 662
    ms = result["scenarios"]["multi_stream"]
    assert ms["batch"] == 8 and ms["inference"]["count"] == ms["queries"] == 30
    # LoadGen needs 662 queries for a p99 early-stopping estimate: fewer is INVALID, and it says why
    assert ms["validity"] == "INVALID" and result["loadgen"]["validity"] == "INVALID"
    assert "early stopping not met" in ms["invalid_reason"] and "662" in ms["invalid_reason"]
    assert ms["early_stopping"]["p99_ms"] is None and ms["latency"]["p99_ms"] > 0
    load_result(str(tiny / "ms.json"))


def test_a_run_planned_by_a_slow_warm_up_is_replanned_by_what_loadgen_measured(tiny, monkeypatch):
    """A warm-up on a busy box can say a batch takes 50x longer than it does: LoadGen then plans too few
    queries, runs out before min_duration and calls the run INVALID. The harness runs it once more, planned
    by LoadGen's own measurement, and records the first plan."""
    from edgekit.device.bench import loadgen

    warm_up = loadgen._estimate_seconds
    monkeypatch.setattr(loadgen, "_estimate_seconds", lambda sut, warmup, typical: 50 * warm_up(sut, warmup, typical))
    said = []
    result = loadgen.benchmark_loadgen(str(tiny / "model.fp32.onnx"), str(tiny / "slow.json"), threads=1,
                                       scenarios=["single_stream", "offline"], modes=["performance"], log=said.append,
                                       settings=loadgen.Settings(min_queries=40, min_seconds=0.2, warmup=3))
    for scenario, name in (("single_stream", "SingleStream"), ("offline", "Offline")):
        found = result["scenarios"][scenario]
        assert found["validity"] == "VALID" and found["min_duration_met"] is True, (scenario, found["invalid_reason"])
        assert "pre-generates" in found["replanned"]["invalid_reason"]  # LoadGen's own advice, kept
        assert found["replanned"]["replans"] >= 1
        assert found["expected_ms"] < found["replanned"]["expected_ms"] / 5
        assert any(line.startswith("LoadGen {}:".format(name)) and "running it again" in line for line in said)
    assert result["loadgen"]["validity"] == "VALID"
    load_result(str(tiny / "slow.json"))


def test_results_table_shows_the_verdict_and_skips_the_log_tree(tiny, measured, capsys):
    main(["results", "--results", str(tiny / "results")])
    out = capsys.readouterr()
    assert "loadgen_validity" in out.out and "VALID" in out.out
    assert "skipped" not in out.err  # the .mlperf/ tree beside the result is no result
    from edgekit.report.dashboard import page_data

    (run,) = page_data(str(tiny / "results"))["runs"]
    assert run["harness"] == "loadgen" and run["loadgen_validity"] == "VALID" and run["loadgen_logs"].endswith(
        "run.mlperf")
    assert "harness" in run["series"] or "loadgen" in run["series"]  # its own series for the regression check


def test_an_accuracy_log_with_a_missing_sample_is_refused(tmp_path):
    entries = [{"seq_id": i, "qsl_idx": i, "data": np.array([i % 3], "<i8").tobytes().hex()} for i in range(4)]
    (tmp_path / mlperf_logs.ACCURACY_LOG).write_text(json.dumps(entries))
    assert mlperf_logs.accuracy_top1(str(tmp_path), np.array([0, 1, 2, 1]))["top1"] == 75.0
    with pytest.raises(EdgekitError, match="4 distinct samples, the eval set 5"):
        mlperf_logs.accuracy_top1(str(tmp_path), np.array([0, 1, 2, 0, 1]))


def test_without_loadgen_the_error_names_the_install_command(tiny, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "mlperf_loadgen", None)
    code = main(["bench", str(tiny / "model.fp32.onnx"), "--harness", "loadgen", "--out", str(tiny / "x.json")])
    assert code == 2
    assert "pip install mlcommons-loadgen==6.0.17" in capsys.readouterr().err


def test_the_edgekit_harness_refuses_loadgens_scenario(tiny, capsys):
    assert main(["bench", str(tiny / "model.fp32.onnx"), "--scenario", "multi_stream"]) == 2
    assert "--harness loadgen" in capsys.readouterr().err
