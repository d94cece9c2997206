"""Thermal zones, clocks and over-current events at the start and end of each measured window, and
the throttle flag.

A Jetson under sustained load heats up; at a hot trip point soctherm throttles the GPU and CPU in
hardware, and an over-current alarm (the board drawing more than its power budget) does the same.
The last seconds of a window then measure a slower chip than the first. Each window records, at its
start and end:

- every thermal zone (`/sys/class/thermal/thermal_zone*/{type,temp}`, millidegrees C) with its trip
  points (`trip_point_<N>_{type,temp}`);
- soctherm's over-current event counters (a hwmon device named `soctherm_oc`: `oc<N>_event_cnt`,
  `oc<N>_throt_en`; what jtop reads);
- the GPU clock (devfreq, see environment.gpu_clocks) and the EMC (memory) clock (Xavier and Orin:
  BPMP debugfs `clk/emc/rate`; JetPack 4: `/sys/kernel/debug/clk/emc/clk_rate`; debugfs, so root only).

A window is `throttled` only on evidence of throttling: an over-current counter rose, a zone was at
or past a hot or critical trip point, or the GPU clock fell below the value jetson_clocks locked it
at. With clocks unlocked, DVFS moves them with the load all the time (1300 -> 306 MHz at a light
load is normal): such changes, and a zone past a passive trip (software cooling, which may cap
clocks), are recorded as `notes`, not as throttling. What cannot be read is "unavailable" with the
reason. Read only, Python 3.8 clean, no torch; every reader takes a `root` so tests use fake trees.
"""

import glob
import os
import re
import time
from typing import Any, Dict, List, Optional

from .environment import gpu_clocks
from .scenarios import Monitor
from .sysfs import read_optional

EMC_RATE = ("sys/kernel/debug/bpmp/debug/clk/emc/rate", "sys/kernel/debug/clk/emc/clk_rate")
THROTTLING_TRIPS = ("hot", "critical")  # soctherm's hardware throttle and its shutdown
SOCTHERM_OC = "sys/class/hwmon/hwmon*"


def _millidegrees(text: Optional[str]) -> Optional[float]:
    if text is None or not re.match(r"^-?\d+$", text):
        return None
    return int(text) / 1000.0


def _zone(folder: str) -> Optional[Dict[str, object]]:
    temp = _millidegrees(read_optional(os.path.join(folder, "temp")))
    if temp is None:
        return None  # a disabled zone answers EINVAL, an offline one EAGAIN
    trips = []
    for trip_type in sorted(glob.glob(os.path.join(folder, "trip_point_*_type"))):
        kind = read_optional(trip_type)
        limit = _millidegrees(read_optional(trip_type[: -len("_type")] + "_temp"))
        if kind and limit is not None:
            trips.append({"type": kind, "temp_c": limit})
    return {"zone": os.path.basename(folder), "type": read_optional(os.path.join(folder, "type")) or "?",
            "temp_c": temp, "trips": trips}


def thermal_zones(root: str = "/") -> Dict[str, object]:
    """{"status": "ok", "zones": [{zone, type, temp_c, trips: [{type, temp_c}]}]} or unavailable + reason."""
    base = os.path.join(root, "sys/class/thermal")
    folders = sorted(glob.glob(os.path.join(base, "thermal_zone*")), key=lambda p: int(re.sub(r"\D", "", p[-4:]) or 0))
    if not folders:
        return {"status": "unavailable", "reason": "no thermal zones under {}".format(base)}
    zones = [z for z in (_zone(folder) for folder in folders) if z is not None]
    unreadable = sorted({os.path.basename(f) for f in folders} - {str(z["zone"]) for z in zones})
    if not zones:
        return {"status": "unavailable", "reason": "thermal zones under {} are not readable ({})".format(
            base, ", ".join(unreadable))}
    out: Dict[str, object] = {"status": "ok", "zones": zones}
    if unreadable:
        out["unreadable"] = unreadable
    return out


def oc_events(root: str = "/") -> Dict[str, object]:
    """soctherm's over-current counters: {"status": "ok", "node", "counts": {"oc1": n, ...}} or unavailable."""
    for folder in sorted(glob.glob(os.path.join(root, SOCTHERM_OC))):
        if read_optional(os.path.join(folder, "name")) != "soctherm_oc":
            continue
        counts = {}
        for path in sorted(glob.glob(os.path.join(folder, "oc*_event_cnt"))):
            text = read_optional(path)
            if text is not None and text.isdigit():
                counts[os.path.basename(path)[: -len("_event_cnt")]] = int(text)
        if counts:
            return {"status": "ok", "node": "/" + os.path.relpath(folder, root), "counts": counts}
        return {"status": "unavailable", "reason": "soctherm_oc at {} has no readable event counters".format(folder)}
    return {"status": "unavailable", "reason": "no soctherm_oc hwmon device under {}".format(
        os.path.join(root, "sys/class/hwmon"))}


def clocks(root: str = "/") -> Dict[str, object]:
    """{"gpu": {cur_freq, min_freq, max_freq, locked, ...} | unavailable, "emc": {"rate_hz"} | unavailable}."""
    gpu = gpu_clocks(root)
    out: Dict[str, object] = {"gpu": gpu if gpu is not None else {
        "status": "unavailable", "reason": "no GPU devfreq node (gv11b/ga10b/gp10b/*.gpu) under {}".format(
            os.path.join(root, "sys"))}}
    for rel in EMC_RATE:
        text = read_optional(os.path.join(root, rel))
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
    return {"time": round(time.time(), 3), "thermal": thermal_zones(root), "clocks": clocks(root),
            "oc_events": oc_events(root)}


def _part(snap: Dict[str, Any], *keys: str) -> Dict[str, Any]:
    for key in keys:
        snap = snap.get(key) if isinstance(snap, dict) else None  # type: ignore[assignment]
    return snap if isinstance(snap, dict) else {}


def _oc_reasons(start: Dict[str, Any], end: Dict[str, Any]) -> List[str]:
    first, last = _part(start, "oc_events", "counts"), _part(end, "oc_events", "counts")
    return ["over-current throttling: {} events went from {} to {}".format(name, first[name], count)
            for name, count in sorted(last.items()) if name in first and count > first[name]]


def _trip_findings(snaps: List[Dict[str, Any]]) -> Dict[str, List[str]]:
    found: Dict[str, List[str]] = {"reasons": [], "notes": []}
    for snap in snaps:
        for zone in _part(snap, "thermal").get("zones", []):
            for trip in zone["trips"]:
                if zone["temp_c"] < trip["temp_c"] or trip["type"] not in THROTTLING_TRIPS + ("passive",):
                    continue
                kind = "reasons" if trip["type"] in THROTTLING_TRIPS else "notes"
                text = "{} at {:.1f} C reached its {} trip point ({:.1f} C){}".format(
                    zone["type"], zone["temp_c"], trip["type"], trip["temp_c"],
                    "" if kind == "reasons" else ": software cooling may cap clocks")
                if text not in found[kind]:
                    found[kind].append(text)
    return found


def _clock_findings(start: Dict[str, Any], end: Dict[str, Any]) -> Dict[str, List[str]]:
    found: Dict[str, List[str]] = {"reasons": [], "notes": []}
    gpu_first, gpu_last = _part(start, "clocks", "gpu"), _part(end, "clocks", "gpu")
    if "cur_freq" in gpu_first and "cur_freq" in gpu_last and gpu_last["cur_freq"] != gpu_first["cur_freq"]:
        move = "GPU clock went from {} to {} MHz".format(round(gpu_first["cur_freq"] / 1e6),
                                                          round(gpu_last["cur_freq"] / 1e6))
        if gpu_first.get("locked") and gpu_last["cur_freq"] < gpu_first["cur_freq"]:
            found["reasons"].append(move + " below the value jetson_clocks locked")
        else:
            found["notes"].append(move + ("" if gpu_first.get("locked") else " (clocks not locked: DVFS, not "
                                                                              "throttling)"))
    emc_first, emc_last = _part(start, "clocks", "emc"), _part(end, "clocks", "emc")
    if "rate_hz" in emc_first and "rate_hz" in emc_last and emc_last["rate_hz"] != emc_first["rate_hz"]:
        found["notes"].append("EMC clock went from {} to {} MHz".format(
            round(emc_first["rate_hz"] / 1e6), round(emc_last["rate_hz"] / 1e6)))
    return found


def _readable(snap: Dict[str, Any]) -> bool:
    return bool(_part(snap, "thermal").get("zones") or _part(snap, "oc_events").get("counts")
                or "cur_freq" in _part(snap, "clocks", "gpu"))


def throttle_check(start: Dict[str, Any], end: Dict[str, Any]) -> Dict[str, object]:
    """{"throttled": bool, or None when nothing was readable; "reasons": the evidence; "notes": what
    moved without being throttling} of a window's two snapshots."""
    trips, moved = _trip_findings([start, end]), _clock_findings(start, end)
    reasons = _oc_reasons(start, end) + trips["reasons"] + moved["reasons"]
    readable = _readable(start) or _readable(end)
    return {"throttled": bool(reasons) if readable else None, "reasons": reasons,
            "notes": trips["notes"] + moved["notes"]}


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
                first["thermal"], first["clocks"]["gpu"], first["clocks"]["emc"], first["oc_events"])  # type: ignore[index]
                if isinstance(part, dict) and part.get("status") == "unavailable")
        return {"thermal": record}
