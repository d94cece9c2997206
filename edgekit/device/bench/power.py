"""Power sampling: a thread that reads the board's rails at ≥ 10 Hz over the measured window.

Sources, the first that works is used:

1. Jetson INA3221 in sysfs, JetPack 5 hwmon layout
   (`/sys/bus/i2c/drivers/ina3221/<bus>-004x/hwmon/hwmon<N>/in<K>_label`, `in<K>_input` mV,
   `curr<K>_input` mA; power = V × I);
2. Jetson INA3221 in sysfs, JetPack 4 iio layout
   (`/sys/bus/i2c/drivers/ina3221x/<bus>-004x/iio:device<N>/rail_name_<K>`, `in_power<K>_input` mW);
3. `tegrastats` (both its `GPU 0/16` and its `GPU 467mW/467mW` formats);
4. NVML (discrete GPUs; Tegra answers NotSupported);
5. Linux powercap / Intel RAPL (`/sys/class/powercap/intel-rapl:<N>/energy_uj`, package zones);

otherwise the result says `unavailable` and why: never a made-up number. Bus and hwmon numbers
are globbed, never hard-coded.

The board total (`total_rule`): on AGX Xavier the six rails (GPU, CPU, SOC, CV, VDDRQ, SYS5V) have
no total among them, so board power is their sum; on Orin NX/Nano, Xavier NX and Nano an input rail
(VDD_IN, POM_5V_IN) already is the board total and summing would count the other rails twice; on
AGX Orin three of its four rails add up (VDDQ_VDD2_1V8AO is inside VIN_SYS_5V0). A target names the
rails that make its total (`power_rails`), and deploy passes them as the rule "A+B+C".

Python 3.8 clean, no torch. Every reader takes a `root` so tests run on a fake sysfs tree.
"""

import glob
import os
import re
import shutil
import subprocess
import threading
import time
from typing import Dict, List, Optional, Tuple

from .sysfs import Unreadable, read_node

Reading = Dict[str, float]  # rail name -> watts


class PowerUnavailable(Exception):
    """This source cannot be used here; the message says why."""


def _read(path: str) -> str:
    try:
        return read_node(path)
    except Unreadable as exc:
        raise PowerUnavailable(str(exc)) from None


def _read_number(path: str) -> float:
    text = _read(path)
    try:
        return float(text)
    except ValueError:
        raise PowerUnavailable("{} holds {!r}, not a number".format(path, text[:40])) from None


class PowerSource(object):
    name = "source"

    def rails(self) -> List[str]:
        raise NotImplementedError

    def read(self) -> Reading:
        """Instant watts per rail."""
        raise NotImplementedError

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- INA3221 sysfs

class Ina3221Hwmon(PowerSource):
    """JetPack 5: in<K>_input (mV) × curr<K>_input (mA) per labelled channel."""

    name = "ina3221-hwmon"
    PATTERN = "sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*/in*_label"

    def __init__(self, root: str = "/") -> None:
        self.channels: List[Tuple[str, str, str]] = []
        for label_path in sorted(glob.glob(os.path.join(root, self.PATTERN))):
            match = re.search(r"in(\d+)_label$", label_path)
            folder = os.path.dirname(label_path)
            k = match.group(1) if match else ""
            volt, curr = os.path.join(folder, "in{}_input".format(k)), os.path.join(folder, "curr{}_input".format(k))
            if not (os.path.exists(volt) and os.path.exists(curr)):
                continue  # e.g. "sum of shunt voltages" channels have no current
            label = _read(label_path)
            if label.upper().startswith("NC"):
                continue  # not connected
            self.channels.append((label, volt, curr))
        if not self.channels:
            raise PowerUnavailable("no INA3221 hwmon channels under {}".format(
                os.path.join(root, "sys/bus/i2c/drivers/ina3221")))
        self.read()  # fail now, not in the sampler thread, if a file cannot be read

    def rails(self) -> List[str]:
        return [c[0] for c in self.channels]

    def read(self) -> Reading:
        return {label: _read_number(volt) * _read_number(curr) / 1e6 for label, volt, curr in self.channels}


class Ina3221Iio(PowerSource):
    """JetPack 4: in_power<K>_input (mW) with rail_name_<K>."""

    name = "ina3221-iio"
    PATTERN = "sys/bus/i2c/drivers/ina3221x/*/iio:device*/rail_name_*"

    def __init__(self, root: str = "/") -> None:
        self.channels: List[Tuple[str, str]] = []
        for name_path in sorted(glob.glob(os.path.join(root, self.PATTERN))):
            k = name_path.rsplit("_", 1)[1]
            power = os.path.join(os.path.dirname(name_path), "in_power{}_input".format(k))
            if os.path.exists(power):
                self.channels.append((_read(name_path), power))
        if not self.channels:
            raise PowerUnavailable("no INA3221 iio rails under {}".format(
                os.path.join(root, "sys/bus/i2c/drivers/ina3221x")))
        self.read()

    def rails(self) -> List[str]:
        return [c[0] for c in self.channels]

    def read(self) -> Reading:
        return {label: _read_number(path) / 1000.0 for label, path in self.channels}


# --------------------------------------------------------------------------- tegrastats

# Newer releases: "GPU 467mW/467mW"; older: "GPU 0/16" (instant/average mW). The lookahead keeps
# "RAM 2035/7764MB" and "IRAM 0/252kB" out.
_TEGRA_NEW = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*) (\d+)mW/(\d+)mW")
_TEGRA_OLD = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*) (\d+)/(\d+)(?=\s|$)")


def parse_tegrastats(line: str) -> Reading:
    """Instant watts per rail from one tegrastats line (either format); {} when it has none."""
    found = _TEGRA_NEW.findall(line)
    if not found:
        found = _TEGRA_OLD.findall(line)
    return {name: int(instant) / 1000.0 for name, instant, _avg in found}


class Tegrastats(PowerSource):
    """Runs `tegrastats --interval <ms>` and keeps the latest line's rails."""

    name = "tegrastats"

    def __init__(self, command: str = "tegrastats", interval_ms: int = 50, timeout: float = 3.0) -> None:
        exe = shutil.which(command)
        if exe is None:
            raise PowerUnavailable("{} not found on PATH".format(command))
        try:
            self.proc = subprocess.Popen([exe, "--interval", str(interval_ms)], stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, universal_newlines=True)
        except OSError as exc:
            raise PowerUnavailable("cannot start {}: {}".format(command, exc)) from None
        self.latest: Reading = {}
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="tegrastats", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self.close()
            raise PowerUnavailable("{} printed no power rails within {:.0f} s".format(command, timeout))

    def _pump(self) -> None:
        for line in self.proc.stdout:
            rails = parse_tegrastats(line)
            if rails:
                self.latest = rails
                self._ready.set()

    def rails(self) -> List[str]:
        return sorted(self.latest)

    def read(self) -> Reading:
        return dict(self.latest)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# --------------------------------------------------------------------------- NVML

class Nvml(PowerSource):
    name = "nvml"

    def __init__(self) -> None:
        try:
            import pynvml  # noqa: PLC0415 - optional
        except ImportError:
            raise PowerUnavailable("pynvml is not installed (pip install nvidia-ml-py)") from None
        self.nvml = pynvml
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self.read()
        except pynvml.NVMLError as exc:  # NotSupported on Tegra, no driver elsewhere
            raise PowerUnavailable("NVML: {}".format(exc)) from None
        if not self.handles:
            raise PowerUnavailable("NVML sees no GPU")

    def rails(self) -> List[str]:
        return ["GPU{}".format(i) for i in range(len(self.handles))]

    def read(self) -> Reading:
        return {"GPU{}".format(i): self.nvml.nvmlDeviceGetPowerUsage(h) / 1000.0 for i, h in enumerate(self.handles)}


# --------------------------------------------------------------------------- RAPL

class Rapl(PowerSource):
    """Intel RAPL energy counters (µJ); power is the counter's change over the sampling interval."""

    name = "rapl"
    PATTERN = "sys/class/powercap/intel-rapl:*"

    def __init__(self, root: str = "/") -> None:
        # Top-level zones only (intel-rapl:0, not intel-rapl:0:0): sub-zones are inside their package.
        zones = [z for z in sorted(glob.glob(os.path.join(root, self.PATTERN)))
                 if re.search(r"intel-rapl:\d+$", z) and os.path.exists(os.path.join(z, "energy_uj"))]
        if not zones:
            raise PowerUnavailable("no RAPL zones under {}".format(os.path.join(root, "sys/class/powercap")))
        self.zones: List[Tuple[str, str, float]] = []
        for z in zones:
            label = _read(os.path.join(z, "name")) if os.path.exists(os.path.join(z, "name")) else os.path.basename(z)
            max_range = os.path.join(z, "max_energy_range_uj")
            wrap = _read_number(max_range) if os.path.exists(max_range) else 2.0 ** 32
            self.zones.append((label, os.path.join(z, "energy_uj"), wrap))
        self._last = self._counters()

    def _counters(self) -> Tuple[float, List[float]]:
        return time.perf_counter(), [_read_number(path) for _, path, _ in self.zones]

    def rails(self) -> List[str]:
        return [z[0] for z in self.zones]

    def read(self) -> Reading:
        now, values = self._counters()
        then, previous = self._last
        self._last = (now, values)
        dt = max(now - then, 1e-6)
        out = {}
        for (label, _, wrap), new, old in zip(self.zones, values, previous):
            delta = new - old if new >= old else new + wrap - old
            out[label] = delta / 1e6 / dt
        return out


# --------------------------------------------------------------------------- detection

def detect_power_source(root: str = "/", tegrastats: str = "tegrastats", use_nvml: bool = True):  # noqa: ANN201
    """The first source that works, and why each earlier one did not: (source or None, reasons)."""
    reasons: List[str] = []
    attempts = [lambda: Ina3221Hwmon(root), lambda: Ina3221Iio(root), lambda: Tegrastats(tegrastats)]
    if use_nvml:
        attempts.append(Nvml)
    attempts.append(lambda: Rapl(root))
    for attempt in attempts:
        try:
            return attempt(), reasons
        except PowerUnavailable as exc:
            reasons.append(str(exc))
    return None, reasons


# An input rail measures the whole board: when one is there, it is the total (never added to the others).
INPUT_RAILS = ("VDD_IN", "POM_5V_IN")
# Rails another rail already carries: AGX Orin's DDR rail VDDQ_VDD2_1V8AO (second INA3221, 1-0041) is fed
# from VIN_SYS_5V0 (L4T r36 developer guide), so adding both counts the memory twice (+6.5%).
INCLUDED_IN = {"VDDQ_VDD2_1V8AO": "VIN_SYS_5V0"}


def named_rails(rule: str) -> List[str]:
    """The rails a rule adds: "A+B+C" -> [A, B, C]; one rail's name -> [it]; "sum" -> [] (every rail)."""
    return [] if rule == "sum" else [part for part in rule.split("+") if part]


def _auto_rule(rails: List[str]) -> Tuple[str, str]:
    for rail in rails:
        if rail.upper() in INPUT_RAILS:
            return rail, "auto: {} is the board's input rail, already the total".format(rail)
    present = {r.upper() for r in rails}
    inside = [r for r in rails if INCLUDED_IN.get(r.upper()) in present]
    if inside:
        kept = [r for r in rails if r not in inside]
        return "+".join(kept), "auto: {} already carries {}: the other rails add up to the board".format(
            ", ".join(INCLUDED_IN[r.upper()] for r in inside), ", ".join(inside))
    return "sum", "auto: no input rail among {}: the rails add up to the board".format(", ".join(rails) or "none")


def total_rule(rails: List[str], requested: Optional[str] = None) -> Tuple[str, str]:
    """(rule, why): "sum" (add every rail), one rail's name (that rail is the board total), or
    "A+B+C" (add exactly these: the rails a target names in `power_rails`).

    `requested`: one of those (the target's rule, `--power-total`), or None/"auto": an input rail
    (VDD_IN on Orin NX/Nano and Xavier NX, POM_5V_IN on Nano) when present; else every rail but those
    another rail already carries (AGX Orin's VDDQ_VDD2_1V8AO inside VIN_SYS_5V0); else the sum. A
    named rail that this board does not have raises PowerUnavailable: a total from the wrong rails
    is no number at all.
    """
    if requested in (None, "", "auto"):
        return _auto_rule(rails)
    if requested == "sum":
        return "sum", "given: the rails add up to the board"
    by_name = {rail.upper(): rail for rail in rails}
    wanted = named_rails(str(requested))
    missing = [name for name in wanted if name.upper() not in by_name]
    if missing:
        raise PowerUnavailable("power total rail {} is not on this board (rails: {}); use --power-total sum or "
                               "rails it has".format(", ".join(missing), ", ".join(rails) or "none"))
    found = [by_name[name.upper()] for name in wanted]
    if len(found) == 1:
        return found[0], "given: {} is the board total".format(found[0])
    left = [rail for rail in rails if rail not in found]
    return "+".join(found), "given: {} add up to the board{}".format(
        ", ".join(found), " ({} not added)".format(", ".join(left)) if left else "")


def board_total(rails_w: Reading, rule: str = "sum") -> float:
    names = named_rails(rule)
    return sum(rails_w.values()) if not names else sum(rails_w.get(name, 0.0) for name in names)


class PowerTrace(object):
    def __init__(self, source: str, rails: List[str]) -> None:
        self.source = source
        self.rails = rails
        self.times: List[float] = []
        self.samples: List[Reading] = []
        self.errors: List[str] = []

    def duration(self) -> float:
        return self.times[-1] - self.times[0] if len(self.times) > 1 else 0.0

    def mean_watts(self) -> Reading:
        if not self.samples:
            return {}
        return {rail: sum(s.get(rail, 0.0) for s in self.samples) / len(self.samples) for rail in self.rails}


class PowerSampler(object):
    """Samples `source` every 1/hz seconds in a thread between `start()` and `stop()`."""

    def __init__(self, source: PowerSource, hz: float = 20.0) -> None:
        if hz < 10:
            raise ValueError("sample at 10 Hz or more, got {}".format(hz))
        self.source = source
        self.period = 1.0 / hz
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.trace = PowerTrace(source.name, source.rails())

    def start(self) -> "PowerSampler":
        self.trace = PowerTrace(self.source.name, self.source.rails())
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="power-sampler", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        next_at = time.perf_counter()
        while not self._stop.is_set():
            try:
                reading = self.source.read()
                self.trace.times.append(time.perf_counter())
                self.trace.samples.append(reading)
            except PowerUnavailable as exc:
                self.trace.errors.append(str(exc))
            next_at += self.period
            self._stop.wait(max(0.0, next_at - time.perf_counter()))

    def stop(self) -> PowerTrace:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        return self.trace

    def __enter__(self) -> "PowerSampler":
        return self.start()

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        self.stop()


def summarize_power(trace: PowerTrace, inferences: int, seconds: float,
                    idle: Optional[PowerTrace] = None, total_rule: str = "sum") -> Dict[str, object]:
    """Average watts per rail and the board total (`total_rule`: "sum" or the total's rail), idle
    baseline, mJ per inference, inferences per joule."""
    if not trace.samples:
        reason = trace.errors[0] if trace.errors else "no samples in the measured window"
        return {"status": "unavailable", "source": trace.source, "reason": reason}
    rails = trace.mean_watts()
    total = board_total(rails, total_rule)
    hz = (len(trace.times) - 1) / trace.duration() if trace.duration() > 0 else None
    out = {"status": "ok", "source": trace.source, "samples": len(trace.samples),
           "sample_hz": round(hz, 2) if hz else None,
           "rails_w": {k: round(v, 4) for k, v in rails.items()}, "total_w": round(total, 4),
           "total_rule": total_rule}
    if inferences > 0 and seconds > 0 and total > 0:
        joules = total * seconds
        out["mj_per_inference"] = round(1000.0 * joules / inferences, 4)
        out["inferences_per_joule"] = round(inferences / joules, 4)
    if idle is not None and idle.samples:
        idle_total = board_total(idle.mean_watts(), total_rule)
        out["idle_w"] = round(idle_total, 4)
        above = total - idle_total
        if inferences > 0 and seconds > 0:
            out["mj_per_inference_above_idle"] = round(1000.0 * above * seconds / inferences, 4)
    return out
