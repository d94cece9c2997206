"""Measuring the way trtexec and MLPerf do (issue 12): the per-query split, time-based warm-up,
--export-times, one static engine per batch, several models at once, thermal and clocks on fake
sysfs trees, the runner registry. Tiny models on onnxruntime: seconds, not minutes."""

import json
import os
import shutil
import subprocess

import numpy as np
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
# trtexec's --exportTimes keys (samples/common/sampleReporting.cpp, 8.5); endToEndMs went in 8.4
TRTEXEC_KEYS = ["startEnqMs", "endEnqMs", "startH2dMs", "endH2dMs", "startComputeMs", "endComputeMs", "startD2hMs",
                "endD2hMs", "h2dMs", "computeMs", "d2hMs", "latencyMs"]


@pytest.fixture()
def tiny(tmp_path):
    path = str(tmp_path / "model.fp32.onnx")
    linear_classifier(path)
    return path


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(str(text) + "\n")


def jetson_thermal_tree(root, gpu_temp=45.5, gpu_hz=1377000000, emc_hz=2133000000, locked=False, oc_events=None,
                        devfreq="17000000.gv11b", emc="sys/kernel/debug/bpmp/debug/clk/emc/rate"):
    """A Jetson's zones (CPU, GPU, AUX...) with trip points, its GPU devfreq, the EMC clock and, when
    given, soctherm's over-current counters (a hwmon device named soctherm_oc)."""
    zones = [("CPU-therm", 44000, [("critical", 96500), ("hot", 93500), ("passive", 90000)]),
             ("GPU-therm", int(gpu_temp * 1000), [("critical", 96500), ("hot", 93500), ("passive", 90000),
                                                  ("active", 50000)]),
             ("AUX-therm", 43500, [("critical", 96500)])]
    for i, (kind, temp, trips) in enumerate(zones):
        zone = os.path.join(root, "sys/class/thermal/thermal_zone{}".format(i))
        write(os.path.join(zone, "type"), kind)
        write(os.path.join(zone, "temp"), temp)
        for k, (trip, limit) in enumerate(trips):
            write(os.path.join(zone, "trip_point_{}_type".format(k)), trip)
            write(os.path.join(zone, "trip_point_{}_temp".format(k)), limit)
    gpu = os.path.join(root, "sys/class/devfreq", devfreq)
    write(os.path.join(gpu, "cur_freq"), gpu_hz)
    write(os.path.join(gpu, "min_freq"), 1377000000 if locked else 114750000)
    write(os.path.join(gpu, "max_freq"), 1377000000)
    write(os.path.join(root, emc), emc_hz)
    if oc_events is not None:
        hwmon = os.path.join(root, "sys/class/hwmon/hwmon2")
        write(os.path.join(hwmon, "name"), "soctherm_oc")
        for k, count in enumerate(oc_events, start=1):
            write(os.path.join(hwmon, "oc{}_event_cnt".format(k)), count)
            write(os.path.join(hwmon, "oc{}_throt_en".format(k)), 1)


def _window(root, before, after):
    """One thermal window over a tree written by `before` and then by `after` (jetson_thermal_tree kwargs)."""
    jetson_thermal_tree(root, **before)
    window = ThermalMonitor(root)
    window.start()
    jetson_thermal_tree(root, **after)
    return window.stop(10, 1.0)["thermal"]


def test_thermal_and_clocks_on_a_fake_xavier(tmp_path):
    root = str(tmp_path)
    jetson_thermal_tree(root)
    zones = thermal_zones(root)
    assert zones["status"] == "ok" and [z["type"] for z in zones["zones"]] == ["CPU-therm", "GPU-therm", "AUX-therm"]
    assert zones["zones"][1]["temp_c"] == 45.5 and {"type": "hot", "temp_c": 93.5} in zones["zones"][1]["trips"]
    c = clocks(root)
    assert c["gpu"]["cur_freq"] == 1377000000 and c["emc"]["rate_hz"] == 2133000000
    record = _window(root, {}, {})
    assert record["throttled"] is False and record["reasons"] == []  # 45.5 C is past the fan's "active" trip only


def test_normal_clock_scaling_is_not_throttling(tmp_path):
    """Unlocked clocks move with the load: 1300 -> 306 MHz with no hot trip reached is DVFS (the old
    check called any drop throttling)."""
    record = _window(str(tmp_path), dict(gpu_hz=1300500000, emc_hz=2133000000),
                     dict(gpu_hz=306000000, emc_hz=665600000, gpu_temp=91.0))
    assert record["throttled"] is False and record["reasons"] == []
    notes = " ".join(record["notes"])
    assert "GPU clock went from 1300 to 306 MHz (clocks not locked: DVFS" in notes and "EMC clock went" in notes
    assert "passive trip point (90.0 C): software cooling may cap clocks" in notes


@pytest.mark.parametrize("before, after, evidence", [
    (dict(), dict(gpu_temp=94.0), "GPU-therm at 94.0 C reached its hot trip point (93.5 C)"),
    (dict(oc_events=[3, 0, 0]), dict(oc_events=[5, 0, 0]), "over-current throttling: oc1 events went from 3 to 5"),
    (dict(locked=True), dict(locked=True, gpu_hz=1100000000), "GPU clock went from 1377 to 1100 MHz below the value "
                                                              "jetson_clocks locked"),
])
def test_throttling_only_on_its_evidence(tmp_path, before, after, evidence):
    record = _window(str(tmp_path), before, after)
    assert record["throttled"] is True and record["reasons"] == [evidence]
    assert record["start"]["oc_events"]["status"] == ("ok" if "oc_events" in before else "unavailable")


def test_jetpack6_gpu_devfreq_and_jetpack4_emc_nodes(tmp_path):
    root = str(tmp_path)
    jetson_thermal_tree(root, devfreq="17000000.gpu", emc="sys/kernel/debug/clk/emc/clk_rate", emc_hz=1600000000)
    c = clocks(root)
    assert c["gpu"]["device"] == "17000000.gpu" and c["gpu"]["cur_freq"] == 1377000000  # Orin on JetPack 6
    assert c["emc"] == {"rate_hz": 1600000000, "node": "/sys/kernel/debug/clk/emc/clk_rate"}  # JetPack 4


@pytest.fixture()
def offline_node(monkeypatch):
    """`offline_node(path)`: make `path` a node that answers EAGAIN, as an offline thermal zone does (Orin
    Nano's cv zones): a FIFO whose write end is held open and that never gets data. A FIFO answers EAGAIN only
    to a non-blocking reader, so Python's own open() is given O_NONBLOCK for these paths: a text read() of it
    then raises TypeError, exactly as on the board."""
    import builtins

    paths, holders = set(), []
    real_open = builtins.open

    def nonblocking_open(file, mode="r", *args, **kwargs):
        if isinstance(file, str) and file in paths:
            kwargs["opener"] = lambda path, flags: os.open(path, flags | os.O_NONBLOCK)
        return real_open(file, mode, *args, **kwargs)

    def make(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.exists(path):
            os.remove(path)
        os.mkfifo(path)
        holders.append(os.open(path, os.O_RDWR | os.O_NONBLOCK))  # a writer that never writes
        paths.add(path)

    monkeypatch.setattr(builtins, "open", nonblocking_open)
    yield make
    for fd in holders:
        os.close(fd)


def test_an_offline_node_is_unavailable_in_every_reader_not_a_crash(tiny, tmp_path, offline_node):
    from test_power_total import hwmon_tree

    from edgekit.device.bench.environment import device_model
    from edgekit.device.bench.power import Ina3221Hwmon, PowerUnavailable

    root = str(tmp_path / "sysfs")
    jetson_thermal_tree(root)
    offline_node(os.path.join(root, "sys/class/thermal/thermal_zone2/temp"))
    zones = thermal_zones(root)
    assert [z["type"] for z in zones["zones"]] == ["CPU-therm", "GPU-therm"]
    assert zones["unreadable"] == ["thermal_zone2"]
    offline_node(os.path.join(root, "proc/device-tree/model"))
    assert device_model(root) is None
    hwmon_tree(root, {"1-0040": [("VDD_IN", 5000, 400)]})
    offline_node(os.path.join(root, "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon1/curr1_input"))
    with pytest.raises(PowerUnavailable, match="curr1_input is offline \\(it answers EAGAIN\\)"):
        Ina3221Hwmon(root)
    result = benchmark(tiny, None, scenarios=["single_stream"], power_root=root, **FAST)  # the old bench aborted
    assert result["scenarios"]["single_stream"]["thermal"]["end"]["thermal"]["unreadable"] == ["thermal_zone2"]
    assert "offline (it answers EAGAIN)" in result["power_unavailable_reasons"][0]


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
    for row in [ss] + result["scenarios"]["offline"]["rows"]:
        assert row["thermal"]["start"]["clocks"]["gpu"]["cur_freq"] == 1377000000
        assert row["thermal"]["throttled"] is False and row["thermal"]["reasons"] == []
    assert result["throttled"] is False
    assert result["soak"]["queries"] > 0 and result["settings"]["warmup_ms"] == 20
    assert result["profile"]["status"] == "unavailable" and "IProfiler" in result["profile"]["reason"]
    rows = json.load(open(times))
    assert len(rows) == ss["queries"] == result["times_file"]["queries"]
    assert list(rows[0]) == TRTEXEC_KEYS
    assert rows[0]["startEnqMs"] >= 20.0  # time zero is before the warm-up (--warmup-ms 20), as trtexec's
    assert all(b["startEnqMs"] >= a["startEnqMs"] for a, b in zip(rows, rows[1:]))
    assert load_result(out)["throttled"] is False  # the schema takes the new fields


def test_export_times_places_gpu_events_on_their_timeline():
    origin = {"start": 9.99, "gpu_start": 4.99}  # the first warm-up query
    records = [{"start": 10.0, "enqueue_start": 10.0003, "enqueue": 0.0001, "h2d": 0.0002, "compute": 0.001,
                "d2h": 0.0003, "gpu_start": 5.0, "end_to_end": 0.002},
               {"start": 10.01, "enqueue_start": 10.0103, "enqueue": 0.0001, "h2d": 0.0002, "compute": 0.001,
                "d2h": 0.0003, "gpu_start": 5.0105, "end_to_end": 0.002}]
    first, second = export_times(records, origin)
    assert list(first) == TRTEXEC_KEYS
    # startEnqMs is the start of the enqueue call, on the host clock from the warm-up's start
    assert first["startEnqMs"] == 10.3 and first["endEnqMs"] == 10.4 and second["startEnqMs"] == 20.3
    assert first["startH2dMs"] == 10.0 and first["endH2dMs"] == 10.2 and first["endComputeMs"] == 11.2
    assert first["endD2hMs"] == 11.5 and first["latencyMs"] == 1.5 and second["startH2dMs"] == 20.5
    assert export_times(records)[0]["startH2dMs"] == 0.0  # no origin given: the first query is time zero


def test_offline_throughput_is_images_over_the_windows_wall_time(tiny):
    """Host work between queries (slow on a Jetson's CPU, and on a busy machine) is part of what Offline
    measures: LoadGen and trtexec divide by wall time. The old harness divided by the sum of latencies."""
    import time as clock

    class SlowHost(OnnxRuntimeRunner):
        name = "slow-host"

        def last_timings(self):
            clock.sleep(0.004)  # the host's own work after each query
            return super(SlowHost, self).last_timings()

    registry.register(registry.RunnerEntry("slow-host", lambda path, **options: SlowHost(path, threads=1),
                                           placements={"cpu": ("fp32",)}, suffixes=(".onnx",), version=lambda: "1"))
    try:
        result = benchmark(tiny, None, runner="slow-host", scenarios=["offline"], batches=[2], power=False,
                           **dict(FAST, min_queries=25))
    finally:
        registry._RUNNERS.pop("slow-host")
    row = result["scenarios"]["offline"]["rows"][0]
    busy = row["queries"] * row["latency"]["mean_ms"] / 1000.0
    assert row["throughput"] == pytest.approx(2 * row["queries"] / row["seconds"], rel=0.01)
    assert row["throughput"] < 0.9 * 2 * row["queries"] / busy  # below the sum-of-latencies figure


def test_the_idle_baseline_is_taken_before_any_warm_up(tiny, tmp_path):
    """A stand-in board whose rail draws more once the model has run: the idle figure must be the idle one."""
    from test_power_total import hwmon_tree

    root = str(tmp_path / "sysfs")
    hwmon_tree(root, {"1-0040": [("VDD_IN", 5000, 400)]})
    current = os.path.join(root, "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon1/curr1_input")

    class Loading(OnnxRuntimeRunner):
        name = "loading"

        def infer_impl(self, feed):
            write(current + ".new", 1200)  # the chip draws more from the first query on
            os.replace(current + ".new", current)  # in one step: the sampler thread reads it meanwhile
            return super(Loading, self).infer_impl(feed)

    registry.register(registry.RunnerEntry("loading", lambda path, **options: Loading(path, threads=1),
                                           placements={"cpu": ("fp32",)}, suffixes=(".onnx",), version=lambda: "1"))
    try:
        result = benchmark(tiny, None, runner="loading", scenarios=["single_stream"], power_root=root,
                           **dict(FAST, idle_seconds=0.15, warmup=3))
    finally:
        registry._RUNNERS.pop("loading")
    power = result["scenarios"]["single_stream"]["power"]
    assert power["idle_w"] == pytest.approx(2.0) and power["total_w"] == pytest.approx(6.0)


def test_the_progress_line_prints_once_per_scenario_in_a_log(tiny):
    """A log (make deploy's, a job's) is no terminal: the old printer wrote a line every 0.5 s of a window."""
    import io

    from edgekit.device.bench.harness import _progress_printer
    from edgekit.device.bench.scenarios import offline, single_stream

    log = io.StringIO()
    show = _progress_printer(log)
    with OnnxRuntimeRunner(tiny, threads=1) as runner:
        feed = {spec.name: np.zeros(spec.concrete_shape(1), spec.dtype) for spec in runner.input_specs()}
        single_stream(runner, feed, warmup=1, min_queries=5, min_seconds=1.1, progress=show)
        offline(runner, lambda b: {n: np.repeat(a, b, 0) for n, a in feed.items()}, [2], warmup=1, min_queries=5,
                min_seconds=0.6, progress=show)
    lines = log.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == ["single-stream", "offline"] and "batch 2" in lines[1]


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
