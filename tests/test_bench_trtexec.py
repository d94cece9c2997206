"""Measuring the way trtexec and MLPerf do (issue 12): the per-query split, time-based warm-up,
--export-times, one static engine per batch, several models at once, thermal and clocks on fake
sysfs trees, the runner registry. Tiny models on onnxruntime: seconds, not minutes."""

import json
import os
import shutil
import subprocess

import pytest
from conftest import REPO, edgekit_cmd
from onnx_fixtures import linear_classifier

from edgekit.device.bench.harness import benchmark, benchmark_concurrent, choose_runner, make_runner
from edgekit.device.bench.results import load_result, schema_problem
from edgekit.device.bench.scenarios import export_times
from edgekit.device.bench.thermal import ThermalMonitor, clocks, thermal_zones, throttle_check
from edgekit.device.runtime import registry
from edgekit.device.runtime.onnxrt import OnnxRuntimeRunner
from edgekit.errors import EdgekitError

FAST = dict(warmup=1, min_queries=5, min_seconds=0.05, idle_seconds=0, progress=False, log=lambda message: None)
TRTEXEC_KEYS = ["startEnqMs", "endEnqMs", "startH2dMs", "endH2dMs", "startComputeMs", "endComputeMs", "startD2hMs",
                "endD2hMs", "h2dMs", "computeMs", "d2hMs", "latencyMs", "endToEndMs"]


@pytest.fixture()
def tiny(tmp_path):
    path = str(tmp_path / "model.fp32.onnx")
    linear_classifier(path)
    return path


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(str(text) + "\n")


def jetson_thermal_tree(root, gpu_temp=45.5, gpu_hz=1377000000, emc_hz=2133000000):
    """An AGX Xavier's zones (CPU, GPU, AUX...) with trip points, its GPU devfreq and the EMC clock."""
    zones = [("CPU-therm", 44000, [("critical", 96500), ("passive", 95500)]),
             ("GPU-therm", int(gpu_temp * 1000), [("critical", 96500), ("passive", 95500), ("active", 50000)]),
             ("AUX-therm", 43500, [("critical", 96500)])]
    for i, (kind, temp, trips) in enumerate(zones):
        zone = os.path.join(root, "sys/class/thermal/thermal_zone{}".format(i))
        write(os.path.join(zone, "type"), kind)
        write(os.path.join(zone, "temp"), temp)
        for k, (trip, limit) in enumerate(trips):
            write(os.path.join(zone, "trip_point_{}_type".format(k)), trip)
            write(os.path.join(zone, "trip_point_{}_temp".format(k)), limit)
    gpu = os.path.join(root, "sys/class/devfreq/17000000.gv11b")
    write(os.path.join(gpu, "cur_freq"), gpu_hz)
    write(os.path.join(gpu, "min_freq"), 114750000)
    write(os.path.join(gpu, "max_freq"), 1377000000)
    write(os.path.join(root, "sys/kernel/debug/bpmp/debug/clk/emc/rate"), emc_hz)


def test_thermal_and_clocks_on_a_fake_xavier(tmp_path):
    root = str(tmp_path)
    jetson_thermal_tree(root)
    zones = thermal_zones(root)
    assert zones["status"] == "ok" and [z["type"] for z in zones["zones"]] == ["CPU-therm", "GPU-therm", "AUX-therm"]
    assert zones["zones"][1]["temp_c"] == 45.5 and {"type": "passive", "temp_c": 95.5} in zones["zones"][1]["trips"]
    c = clocks(root)
    assert c["gpu"]["cur_freq"] == 1377000000 and c["emc"]["rate_hz"] == 2133000000
    window = ThermalMonitor(root)
    window.start()
    record = window.stop(10, 1.0)["thermal"]
    assert record["throttled"] is False and record["reasons"] == []  # 45.5 C is past the fan's "active" trip only
    window.start()
    jetson_thermal_tree(root, gpu_temp=96.0, gpu_hz=1100000000)  # hot, and the governor cut the GPU clock
    record = window.stop(10, 1.0)["thermal"]
    assert record["throttled"] is True
    assert any("GPU clock dropped from 1377 to 1100 MHz" in r for r in record["reasons"])
    assert any("GPU-therm at 96.0 C reached its passive trip point" in r for r in record["reasons"])


def test_missing_nodes_are_unavailable_with_the_reason(tmp_path):
    root = str(tmp_path)
    assert thermal_zones(root)["reason"].startswith("no thermal zones under")
    assert clocks(root)["gpu"]["status"] == "unavailable" and "EMC" in clocks(root)["emc"]["reason"]
    window = ThermalMonitor(root)
    window.start()
    record = window.stop(1, 1.0)["thermal"]
    assert record["throttled"] is None and record["status"] == "unavailable" and "no thermal zones" in record["reason"]
    assert throttle_check({}, {})["throttled"] is None


def test_bench_records_split_thermal_and_exports_times(tiny, tmp_path):
    root = str(tmp_path / "sysfs")
    jetson_thermal_tree(root)
    times = str(tmp_path / "times.json")
    out = str(tmp_path / "r.json")
    result = benchmark(tiny, out, batches=[1, 2], power=False, thermal_root=root, warmup_ms=20, soak_seconds=0.05,
                       export_times_path=times, export_profile_path=str(tmp_path / "profile.json"), **FAST)
    ss = result["scenarios"]["single_stream"]
    split = ss["split"]
    assert split["compute"]["count"] == ss["queries"] and split["end_to_end"]["count"] == ss["queries"]
    for key in ("min_ms", "max_ms", "mean_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms"):  # trtexec's summary
        assert key in split["end_to_end"]
    assert split["h2d"]["status"] == "not applicable" and "onnxruntime" in split["h2d"]["reason"]
    assert ss["thermal"]["throttled"] is False and result["throttled"] is False
    for row in result["scenarios"]["offline"]["rows"]:
        assert row["thermal"]["start"]["clocks"]["gpu"]["cur_freq"] == 1377000000
    assert result["soak"]["queries"] > 0 and result["settings"]["warmup_ms"] == 20
    assert result["profile"]["status"] == "unavailable" and "IProfiler" in result["profile"]["reason"]
    rows = json.load(open(times))
    assert len(rows) == ss["queries"] == result["times_file"]["queries"]
    assert list(rows[0]) == TRTEXEC_KEYS and rows[0]["startEnqMs"] == 0.0
    assert all(b["startEnqMs"] >= a["startEnqMs"] for a, b in zip(rows, rows[1:]))
    assert load_result(out)["throttled"] is False  # the schema takes the new fields


def test_export_times_places_gpu_events_on_their_timeline():
    records = [{"start": 10.0, "enqueue": 0.0001, "h2d": 0.0002, "compute": 0.001, "d2h": 0.0003,
                "gpu_start": 5.0, "end_to_end": 0.002},
               {"start": 10.01, "enqueue": 0.0001, "h2d": 0.0002, "compute": 0.001, "d2h": 0.0003,
                "gpu_start": 5.0105, "end_to_end": 0.002}]
    first, second = export_times(records)
    assert first["startH2dMs"] == 0.0 and first["endH2dMs"] == 0.2 and first["endComputeMs"] == 1.2
    assert first["endD2hMs"] == 1.5 and first["latencyMs"] == 1.5 and first["endToEndMs"] == 2.0
    assert second["startEnqMs"] == 10.0 and second["startH2dMs"] == 10.5


def test_one_static_engine_per_batch(tiny, tmp_path):
    for batch in (1, 2, 4):  # stand-ins for engines/student.int8.dla0.b{batch}.engine
        shutil.copy(tiny, str(tmp_path / "student.b{}.onnx".format(batch)))
    pattern = str(tmp_path / "student.b{batch}.onnx")
    result = benchmark(pattern, None, batches=[1, 2, 4], power=False, eval_set=None, **FAST)
    engines = result["model"]["engines"]
    assert sorted(engines, key=int) == ["1", "2", "4"] and engines["4"]["path"].endswith("student.b4.onnx")
    assert [r["batch"] for r in result["scenarios"]["offline"]["rows"]] == [1, 2, 4]
    with pytest.raises(EdgekitError, match=r"student\.b8\.onnx \(batch 8\) does not exist"):
        benchmark(pattern, None, batches=[1, 8], power=False, **FAST)


def test_concurrent_offline_reports_each_share_and_the_total(tiny, tmp_path):
    second = str(tmp_path / "other.fp32.onnx")
    shutil.copy(tiny, second)
    out = str(tmp_path / "c.json")
    result = benchmark_concurrent([tiny, second, tiny], out, threads=1, batch=2, warmup=1, min_seconds=0.3,
                                  power=False, idle_seconds=0, progress=False, log=lambda message: None)
    measured = result["scenarios"]["concurrent_offline"]
    engines = measured["engines"]
    assert len(engines) == 3 and all(e["queries"] > 0 and e["batch"] == 2 for e in engines)
    assert sum(e["images"] for e in engines) == measured["images"]
    assert abs(sum(e["share"] for e in engines) - 1.0) < 1e-3
    assert measured["throughput"] == pytest.approx(sum(e["throughput"] for e in engines), rel=1e-3)
    assert "thermal" in measured and schema_problem(load_result(out)) == ""
    with pytest.raises(EdgekitError, match="two or more"):
        benchmark_concurrent([tiny])


def test_bench_cli_concurrent_and_new_flags(tiny, tmp_path):
    out = str(tmp_path / "cli.json")
    proc = subprocess.run(edgekit_cmd("bench", "--concurrent", "{0},{0}".format(tiny), "--batches", "1",
                                      "--duration", "0.3", "--no-power", "--idle-seconds", "0", "--out", out),
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "together:" in proc.stdout and load_result(out)["scenarios"]["concurrent_offline"]["engines"]
    proc = subprocess.run(edgekit_cmd("bench", tiny, "--scenario", "single_stream", "--duration", "0.05",
                                      "--queries", "5", "--warmup-ms", "10", "--use-spin-wait", "--no-power",
                                      "--idle-seconds", "0", "--out", out, "--power-total", "VDD_IN"),
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    result = load_result(out)
    assert result["settings"]["spin_wait"] is True and result["settings"]["power_total"] == "VDD_IN"
    assert "thermal" in result["scenarios"]["single_stream"]


def test_runners_come_from_the_registry(tiny):
    assert {"onnxruntime", "tensorrt", "pytorch", "torch-tensorrt"} <= set(registry.names())
    made = []

    class Counting(OnnxRuntimeRunner):
        name = "counting"

    def factory(path, **options):
        made.append(options)
        return Counting(path, threads=options.get("threads"))

    registry.register(registry.RunnerEntry("counting", factory, placements={"cpu": ("fp32",)}, suffixes=(".onnx",),
                                           version=lambda: "1.0", description="a test runtime"))
    try:
        assert choose_runner(tiny, "counting") == ("counting", tiny, "asked for")
        runner = make_runner(tiny, "counting", threads=1)
        assert isinstance(runner, Counting) and made[0]["threads"] == 1
        result = benchmark(tiny, None, runner="counting", scenarios=["single_stream"], power=False, **FAST)
        assert result["runtime"]["runner"] == "counting"
    finally:
        registry._RUNNERS.pop("counting")
    with pytest.raises(EdgekitError, match="unknown runner 'nope'; choose auto or one of"):
        choose_runner(tiny, "nope")
    with pytest.raises(EdgekitError, match="runs .onnx files"):
        registry.create("onnxruntime", "model.engine")


def test_the_results_table_shows_the_throttle_flag(tiny, tmp_path):
    from edgekit.report.store import flatten, format_table

    root = str(tmp_path / "sysfs")
    jetson_thermal_tree(root, gpu_temp=97.0)  # past the passive trip from the start
    result = benchmark(tiny, None, scenarios=["single_stream"], power=False, thermal_root=root, **FAST)
    assert result["throttled"] is True
    run = flatten(result, "r.json")
    assert run["throttled"] == 1
    table = format_table([run]).splitlines()
    assert "throttled" in table[0].split() and table[1].split()[-2] == "1"
