"""Thermal zones and clocks at the start and end of each measured window, and the throttle flag.

A Jetson under sustained load heats up; past a passive trip point its governors lower the GPU and
EMC (memory) clocks, and the last seconds of a window then measure a slower chip than the first.
Each window therefore records, at its start and end:

- every thermal zone (`/sys/class/thermal/thermal_zone*/{type,temp}`, millidegrees C) with its trip
  points (`trip_point_<N>_{type,temp}`; "active" trips only start a fan and are not throttling);
- the GPU clock (devfreq `cur_freq`, see environment.gpu_clocks) and the EMC clock (JetPack 5:
  `/sys/kernel/debug/bpmp/debug/clk/emc/rate`, JetPack 4: `/sys/kernel/debug/clock/emc/rate`;
  debugfs, so root only).

A window is `throttled` when a clock dropped between its start and end, or a zone reached a
(non-active) trip point. What cannot be read is recorded as "unavailable" with the reason. Read
only, Python 3.8 clean, no torch; every reader takes a `root` so tests use fake sysfs trees.
"""

import glob
import os
import re
import time
from typing import Dict, List, Optional

from .environment import gpu_clocks
from .scenarios import Monitor

EMC_RATE = ("sys/kernel/debug/bpmp/debug/clk/emc/rate", "sys/kernel/debug/clock/emc/rate")
THROTTLING_TRIPS = ("passive", "hot", "critical")


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _millidegrees(text: Optional[str]) -> Optional[float]:
    if text is None or not re.match(r"^-?\d+$", text):
        return None
    return int(text) / 1000.0


def thermal_zones(root: str = "/") -> Dict[str, object]:
    """{"status": "ok", "zones": [{zone, type, temp_c, trips: [{type, temp_c}]}]} or unavailable + reason."""
    base = os.path.join(root, "sys/class/thermal")
    folders = sorted(glob.glob(os.path.join(base, "thermal_zone*")), key=lambda p: int(re.sub(r"\D", "", p[-4:]) or 0))
    if not folders:
        return {"status": "unavailable", "reason": "no thermal zones under {}".format(base)}
    zones: List[Dict[str, object]] = []
    unreadable = []
    for folder in folders:
        temp = _millidegrees(_read(os.path.join(folder, "temp")))
        if temp is None:
            unreadable.append(os.path.basename(folder))  # e.g. a disabled zone answers EINVAL
            continue
        trips = []
        for trip_type in sorted(glob.glob(os.path.join(folder, "trip_point_*_type"))):
            kind = _read(trip_type)
            limit = _millidegrees(_read(trip_type[: -len("_type")] + "_temp"))
            if kind and limit is not None:
                trips.append({"type": kind, "temp_c": limit})
        zones.append({"zone": os.path.basename(folder), "type": _read(os.path.join(folder, "type")) or "?",
                      "temp_c": temp, "trips": trips})
    if not zones:
        return {"status": "unavailable", "reason": "thermal zones under {} are not readable ({})".format(
            base, ", ".join(unreadable))}
    out: Dict[str, object] = {"status": "ok", "zones": zones}
    if unreadable:
        out["unreadable"] = unreadable
    return out


def clocks(root: str = "/") -> Dict[str, object]:
    """{"gpu": {cur_freq, min_freq, max_freq, ...} | unavailable, "emc": {"rate_hz"} | unavailable}."""
    gpu = gpu_clocks(root)
    out: Dict[str, object] = {"gpu": gpu if gpu is not None else {
        "status": "unavailable", "reason": "no GPU devfreq node (gv11b/ga10b/gp10b) under {}".format(
            os.path.join(root, "sys"))}}
    for rel in EMC_RATE:
        path = os.path.join(root, rel)
        text = _read(path)
        if text is not None and text.isdigit():
            out["emc"] = {"rate_hz": int(text), "node": "/" + rel}
            break
    else:
        debugfs = os.path.join(root, "sys/kernel/debug")
        why = ("debugfs at {} is not readable (the EMC clock is there: run as root)".format(debugfs)
               if os.path.isdir(debugfs) and not os.access(debugfs, os.R_OK) else
               "no EMC clock node ({})".format(", ".join("/" + r for r in EMC_RATE)))
        out["emc"] = {"status": "unavailable", "reason": why}
    return out


def snapshot(root: str = "/") -> Dict[str, object]:
    return {"time": round(time.time(), 3), "thermal": thermal_zones(root), "clocks": clocks(root)}


def throttle_check(start: Dict[str, object], end: Dict[str, object]) -> Dict[str, object]:
    """{"throttled": bool or None (nothing readable), "reasons": [...]} of a window's two snapshots."""
    reasons: List[str] = []
    readable = False
    for name, key in (("GPU", "cur_freq"), ("EMC", "rate_hz")):
        first = (start.get("clocks") or {}).get(name.lower()) or {}  # type: ignore[union-attr]
        last = (end.get("clocks") or {}).get(name.lower()) or {}  # type: ignore[union-attr]
        if key in first and key in last:
            readable = True
            if last[key] < first[key]:
                reasons.append("{} clock dropped from {} to {} MHz".format(
                    name, round(first[key] / 1e6), round(last[key] / 1e6)))
    for snap in (start, end):
        thermal = snap.get("thermal") or {}
        for zone in thermal.get("zones", []) if isinstance(thermal, dict) else []:
            readable = True
            for trip in zone["trips"]:
                if trip["type"] in THROTTLING_TRIPS and zone["temp_c"] >= trip["temp_c"]:
                    reason = "{} at {:.1f} C reached its {} trip point ({:.1f} C)".format(
                        zone["type"], zone["temp_c"], trip["type"], trip["temp_c"])
                    if reason not in reasons:
                        reasons.append(reason)
    return {"throttled": bool(reasons) if readable else None, "reasons": reasons}


class ThermalMonitor(Monitor):
    """Snapshots at each measured window's start and end; the row gets `thermal` with the flag."""

    def __init__(self, root: str = "/") -> None:
        self.root = root
        self.first: Optional[Dict[str, object]] = None

    def start(self) -> None:
        self.first = snapshot(self.root)

    def stop(self, inferences: int, seconds: float) -> Dict[str, object]:
        last = snapshot(self.root)
        first = self.first or last
        record: Dict[str, object] = {"start": first, "end": last}
        record.update(throttle_check(first, last))
        if record["throttled"] is None:
            record["status"] = "unavailable"
            record["reason"] = "; ".join(str(part.get("reason")) for part in (
                first["thermal"], first["clocks"]["gpu"], first["clocks"]["emc"])  # type: ignore[index]
                if isinstance(part, dict) and part.get("status") == "unavailable")
        return {"thermal": record}
