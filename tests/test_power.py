"""Power sources on fake sysfs trees and captured tegrastats lines laid out as the real ones."""

import os
import subprocess
import time

import pytest
from conftest import REPO

from edgekit.device.bench.power import (
    Ina3221Hwmon,
    Ina3221Iio,
    PowerSampler,
    PowerSource,
    PowerTrace,
    PowerUnavailable,
    Rapl,
    detect_power_source,
    parse_tegrastats,
    summarize_power,
)

# AGX Xavier: two INA3221 at 0x40 (GPU, CPU, SOC) and 0x41 (CV, VDDRQ, SYS5V); (mV, mA) per rail.
XAVIER_RAILS = {"1-0040": [("GPU", 19136, 24), ("CPU", 19128, 48), ("SOC", 19120, 80)],
                "1-0041": [("CV", 19144, 0), ("VDDRQ", 19136, 24), ("SYS5V", 4968, 312)]}


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text + "\n")


def jetpack5_tree(root):
    """/sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3/in1_label ... as JetPack 5 lays it out."""
    for n, (chip, rails) in enumerate(sorted(XAVIER_RAILS.items())):
        hwmon = os.path.join(root, "sys/bus/i2c/drivers/ina3221", chip, "hwmon", "hwmon{}".format(3 + n))
        write(os.path.join(hwmon, "name"), "ina3221")
        for k, (label, mv, ma) in enumerate(rails, start=1):
            write(os.path.join(hwmon, "in{}_label".format(k)), label)
            write(os.path.join(hwmon, "in{}_input".format(k)), str(mv))
            write(os.path.join(hwmon, "curr{}_input".format(k)), str(ma))
            write(os.path.join(hwmon, "curr{}_max".format(k)), "1000")
        # the summed-shunt channel has a label and a voltage but no current of its own
        write(os.path.join(hwmon, "in7_label"), "sum of shunt voltages")
        write(os.path.join(hwmon, "in7_input"), "0")


def jetpack4_tree(root):
    """/sys/bus/i2c/drivers/ina3221x/1-0040/iio:device0/in_power0_input ... (mW) as JetPack 4 has it."""
    for n, (chip, rails) in enumerate(sorted(XAVIER_RAILS.items())):
        dev = os.path.join(root, "sys/bus/i2c/drivers/ina3221x", chip, "iio:device{}".format(n))
        for k, (label, mv, ma) in enumerate(rails):
            write(os.path.join(dev, "rail_name_{}".format(k)), label)
            write(os.path.join(dev, "in_power{}_input".format(k)), str(mv * ma // 1000))
            write(os.path.join(dev, "in_voltage{}_input".format(k)), str(mv))
            write(os.path.join(dev, "in_current{}_input".format(k)), str(ma))


def expected_watts():
    return {label: mv * ma / 1e6 for rails in XAVIER_RAILS.values() for label, mv, ma in rails}


def test_jetpack5_hwmon_reads_all_six_xavier_rails(tmp_path):
    jetpack5_tree(str(tmp_path))
    source = Ina3221Hwmon(str(tmp_path))
    assert sorted(source.rails()) == sorted(["GPU", "CPU", "SOC", "CV", "VDDRQ", "SYS5V"])
    reading = source.read()
    for rail, watts in expected_watts().items():
        assert reading[rail] == pytest.approx(watts)
    # board power is the sum of the six rails (SYS5V is not the total)
    assert sum(reading.values()) == pytest.approx(sum(expected_watts().values()))


def test_jetpack4_iio_reads_milliwatts(tmp_path):
    jetpack4_tree(str(tmp_path))
    source = Ina3221Iio(str(tmp_path))
    reading = source.read()
    assert len(reading) == 6
    assert reading["SYS5V"] == pytest.approx(4968 * 312 // 1000 / 1000.0)


def test_detection_order_and_reasons(tmp_path):
    jetpack4_tree(str(tmp_path))
    jetpack5_tree(str(tmp_path))
    source, reasons = detect_power_source(str(tmp_path), tegrastats="no-such-tegrastats", use_nvml=False)
    assert source.name == "ina3221-hwmon" and reasons == []
    empty = tmp_path / "empty"
    empty.mkdir()
    source, reasons = detect_power_source(str(empty), tegrastats="no-such-tegrastats", use_nvml=False)
    assert source is None
    assert [r.split(" ")[0] for r in reasons] == ["no", "no", "no-such-tegrastats", "no"]
    assert "RAPL" in reasons[-1]


XAVIER_JP4_LINE = ("RAM 2035/7764MB (lfb 1x4MB) SWAP 0/3882MB (cached 0MB) CPU [2%@1190,1%@1190,0%@1190,"
                   "0%@1190,off,off,off,off] EMC_FREQ 0% GR3D_FREQ 0% AO@36C GPU@37C Tdiode@39.75C PMIC@100C "
                   "AUX@36C CPU@37.5C thermal@36.9C Tboard@36C GPU 0/16 CPU 310/432 SOC 931/953 CV 0/0 "
                   "VDDRQ 466/488 SYS5V 1522/1559")
XAVIER_JP5_LINE = ("11-25-2026 10:00:00 RAM 2930/30991MB (lfb 6846x4MB) SWAP 0/15495MB (cached 0MB) "
                   "CPU [1%@1190,0%@1190,0%@1190,0%@1190,0%@1190,0%@1190,0%@1190,0%@1190] EMC_FREQ 0%@2133 "
                   "GR3D_FREQ 0%@[1377,1377] VIC_FREQ 115 APE 150 AUX@31C CPU@32.5C thermal@31.85C Tboard@31C "
                   "AO@31.5C GPU@31C Tdiode@34C PMIC@50C GPU 467mW/467mW CPU 934mW/934mW SOC 1556mW/1556mW "
                   "CV 0mW/0mW VDDRQ 311mW/311mW SYS5V 2768mW/2768mW")


def test_tegrastats_both_formats():
    old = parse_tegrastats(XAVIER_JP4_LINE)
    assert old == {"GPU": 0.0, "CPU": 0.31, "SOC": 0.931, "CV": 0.0, "VDDRQ": 0.466, "SYS5V": 1.522}
    new = parse_tegrastats(XAVIER_JP5_LINE)
    assert new == {"GPU": 0.467, "CPU": 0.934, "SOC": 1.556, "CV": 0.0, "VDDRQ": 0.311, "SYS5V": 2.768}
    assert parse_tegrastats("RAM 2035/7764MB (lfb 1x4MB) SWAP 0/3882MB") == {}


def test_tegrastats_source_runs_the_real_command_line(tmp_path):
    """A stand-in `tegrastats` executable printing captured lines: the subprocess path for real."""
    from edgekit.device.bench.power import Tegrastats

    script = tmp_path / "tegrastats"
    script.write_text("#!/bin/sh\nwhile true; do echo '{}'; sleep 0.05; done\n".format(XAVIER_JP5_LINE))
    script.chmod(0o755)
    source = Tegrastats(str(script))
    try:
        assert source.read()["SYS5V"] == pytest.approx(2.768)
    finally:
        source.close()
    assert source.proc.poll() is not None


def test_rapl_counts_energy_over_the_interval_and_wraps(tmp_path):
    zone = tmp_path / "sys/class/powercap/intel-rapl:0"
    write(str(zone / "name"), "package-0")
    write(str(zone / "energy_uj"), "1000000")
    write(str(zone / "max_energy_range_uj"), "262143328850")
    write(str(tmp_path / "sys/class/powercap/intel-rapl:0:0/energy_uj"), "5")  # a sub-zone: ignored
    source = Rapl(str(tmp_path))
    assert source.rails() == ["package-0"]
    time.sleep(0.1)
    write(str(zone / "energy_uj"), "3000000")  # 2 J later
    watts = source.read()["package-0"]
    assert 2.0 / 0.5 < watts < 2.0 / 0.09
    write(str(zone / "energy_uj"), "10")  # the counter wrapped
    assert source.read()["package-0"] > 0


def test_unreadable_power_files_report_the_reason():
    """Permissions for real: the check runs as `nobody`, for whom root's mode-600 files are unreadable.

    Root reads everything, so the reader runs under the system Python as uid 65534 on a copy of the
    package in a world-readable folder (the venv and pytest's tmp folders live under /root).
    """
    import shutil
    import tempfile

    system_python = "/usr/bin/python3"
    if os.geteuid() != 0 or not os.access(system_python, os.X_OK):
        pytest.skip("needs root and {} to run the reader as another user".format(system_python))
    top = tempfile.mkdtemp(prefix="edgekit-perm-")
    try:
        os.chmod(top, 0o755)
        shutil.copytree(os.path.join(REPO, "edgekit"), os.path.join(top, "edgekit"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        tree = os.path.join(top, "tree")
        jetpack5_tree(tree)
        for dirpath, dirs, files in os.walk(top):
            for name in dirs:
                os.chmod(os.path.join(dirpath, name), 0o755)
            for name in files:
                os.chmod(os.path.join(dirpath, name), 0o600 if name.startswith("curr") else 0o644)
        code = ("import sys; from edgekit.device.bench.power import detect_power_source; "
                "s, r = detect_power_source(sys.argv[1], tegrastats='none', use_nvml=False); print(s, r[0])")
        proc = subprocess.run([system_python, "-c", code, tree], capture_output=True, text=True, cwd=top,
                              env={"PATH": "/usr/bin:/bin", "PYTHONPATH": top}, preexec_fn=lambda: os.setuid(65534))
    finally:
        shutil.rmtree(top, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("None ")
    assert "curr1_input is not readable (permissions" in proc.stdout


class FakeConstant(PowerSource):
    name = "constant"

    def rails(self):
        return ["A", "B"]

    def read(self):
        return {"A": 6.0, "B": 4.0}


def test_sampler_runs_at_least_ten_hertz():
    sampler = PowerSampler(FakeConstant(), hz=50).start()
    time.sleep(0.5)
    trace = sampler.stop()
    assert len(trace.samples) >= 10
    summary = summarize_power(trace, inferences=100, seconds=2.0)
    assert summary["sample_hz"] >= 10
    with pytest.raises(ValueError):
        PowerSampler(FakeConstant(), hz=5)


def test_energy_arithmetic():
    trace = PowerTrace("x", ["A", "B"])
    trace.times = [0.0, 1.0, 2.0]
    trace.samples = [{"A": 6.0, "B": 4.0}] * 3
    idle = PowerTrace("x", ["A", "B"])
    idle.times, idle.samples = [0.0, 1.0], [{"A": 3.0, "B": 1.0}] * 2
    s = summarize_power(trace, inferences=100, seconds=2.0, idle=idle)
    assert s["total_w"] == 10.0 and s["rails_w"] == {"A": 6.0, "B": 4.0}
    assert s["mj_per_inference"] == 200.0 and s["inferences_per_joule"] == 5.0
    assert s["idle_w"] == 4.0 and s["mj_per_inference_above_idle"] == 120.0
    empty = PowerTrace("x", ["A"])
    empty.errors.append("cannot read /sys/x")
    assert summarize_power(empty, 1, 1.0) == {"status": "unavailable", "source": "x", "reason": "cannot read /sys/x"}


def test_a_failing_source_is_reported_not_fatal():
    class Broken(FakeConstant):
        def read(self):
            raise PowerUnavailable("rail vanished")

    sampler = PowerSampler(Broken(), hz=50).start()
    time.sleep(0.1)
    trace = sampler.stop()
    assert summarize_power(trace, 10, 1.0)["reason"] == "rail vanished"
