"""Per-layer latency lookup tables: built on a backend, cached on disk, calibrated end to end.

Each of ResNet-50's 25 layer kinds is timed on a grid of (input, output) widths: `points` widths per
axis, evenly spread fractions of the dense width (k/points, rounded up to a multiple of 8), so
8 points measure every 12.5% of each group. A coarse full grid rather than a few widths per layer
and a fitted curve, because the point is to *see* the staircase (on a GPU 128 channels can run
faster than 112, as measured on an H200) and a fitted curve would smooth it away; off-grid widths (students
pruned to a MACs target) are read by bilinear interpolation. On 2 CPU cores the 8x8 grid costs
about a minute at 224x224; the allocation only ever picks grid widths, so what it chooses was
measured, not interpolated.

The sum of the isolated layers misses what the layers do not show alone (pooling, the classifier,
launch overheads, caches warmed by the previous layer): one scale factor, fitted by least squares
on whole networks of several width specs, maps the sum onto end-to-end latency, and the table keeps
each spec's prediction error.

Tables are cached by backend, device, runtime version, input size, batch, precision and grid:
change any of them and the key changes.
"""

import json
import math
import os
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ...artifacts import config_hash, write_json_atomic
from ...errors import EdgekitError
from .backends import Backend
from .layers import (
    DENSE_MID,
    DENSE_OUT,
    DENSE_STEM,
    Groups,
    LayerKind,
    dense_groups,
    layer_kinds,
    layers,
)

TABLE_FORMAT = "edgekit.latency-table/2"  # /2: window medians (was the 10th percentile)
DEFAULT_POINTS = 8


def round_up(value: float, multiple: int = 8) -> int:
    return int(max(multiple, multiple * math.ceil(value / float(multiple) - 1e-9)))


def grid_widths(dense: int, points: int = DEFAULT_POINTS) -> List[int]:
    return sorted({min(dense, round_up(dense * k / float(points))) for k in range(1, points + 1)})


def _dense_width(kind: LayerKind, group: Optional[str]) -> int:
    if group is None:
        return 3
    if group == "stem":
        return DENSE_STEM
    stage = int(kind.name[len("layer")]) - 1
    if group in ("mid1", "mid2"):
        return DENSE_MID[stage]
    return DENSE_OUT[int(group[len("layer")]) - 1]


def group_dense_width(group: str) -> int:
    return dense_groups()[group]


def table_key(backend: str, device: str, runtime: str, image_size: int, batch: int, precision: str,
              points: int) -> Dict[str, Any]:
    return {"format": TABLE_FORMAT, "arch": "resnet50", "backend": backend, "device": device,
            "runtime": runtime, "image_size": int(image_size), "batch": int(batch), "precision": precision,
            "points": int(points)}


def key_hash(key: Dict[str, Any]) -> str:
    return config_hash(key)[:16]


def cache_dir() -> str:
    root = os.environ.get("EDGEKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "edgekit")
    return os.path.join(root, "latency")


def cache_path(key: Dict[str, Any], folder: Optional[str] = None) -> str:
    return os.path.join(folder or cache_dir(), "{}-{}.json".format(key["backend"], key_hash(key)))


class LatencyTable(object):
    """Measured milliseconds per layer kind on a (cin, cout) grid, plus the end-to-end scale."""

    def __init__(self, data: Dict[str, Any]) -> None:
        if data.get("format") != TABLE_FORMAT:
            raise EdgekitError("not a latency table (format {!r}, expected {})".format(data.get("format"),
                                                                                     TABLE_FORMAT))
        self.data = data
        self.kinds = {k.name: k for k in layer_kinds(int(data["key"]["image_size"]))}
        self._grids = {name: (np.asarray(e["cin"], float), np.asarray(e["cout"], float), np.asarray(e["ms"], float))
                       for name, e in data["kinds"].items()}

    @property
    def key(self) -> Dict[str, Any]:
        return self.data["key"]

    @property
    def scale(self) -> float:
        value = self.data.get("scale")
        return 1.0 if value is None else float(value)

    @classmethod
    def load(cls, path: str) -> "LatencyTable":
        try:
            with open(path, encoding="utf-8") as f:
                return cls(json.load(f))
        except (OSError, ValueError) as exc:
            raise EdgekitError("cannot read latency table {}: {}".format(path, exc)) from None

    def save(self, path: str) -> None:
        write_json_atomic(path, self.data)

    def layer_ms(self, kind: str, cin: int, cout: int) -> float:
        gin, gout, ms = self._grids[kind]
        # Bilinear on the grid (exact at grid points, which is all the allocation ever asks for).
        along_out = np.array([np.interp(cout, gout, row) for row in ms])
        return float(np.interp(cin, gin, along_out)) if len(gin) > 1 else float(along_out[0])

    @property
    def weight_ms(self) -> float:
        """Calibrated ms per million conv weights (0 unless the fit found weight traffic)."""
        return float(self.data.get("weight_ms_per_mparam") or 0.0)

    def layer_cost(self, kind: str, cin: int, cout: int) -> float:
        """One layer's share of the end-to-end prediction."""
        k = self.kinds[kind].kernel
        return self.scale * self.layer_ms(kind, cin, cout) + self.weight_ms * cin * cout * k * k / 1e6

    def raw_ms(self, groups: Groups) -> float:
        """The sum of the isolated layers, uncalibrated."""
        total = 0.0
        for kind, gin, gout in layers(groups, int(self.key["image_size"])):
            total += self.layer_ms(kind.name, 3 if gin is None else groups[gin], groups[gout])
        return total

    def predict_ms(self, groups: Groups) -> float:
        return sum(self.layer_cost(kind.name, 3 if gin is None else groups[gin], groups[gout])
                   for kind, gin, gout in layers(groups, int(self.key["image_size"])))

    def widths(self, group: str) -> List[int]:
        """The widths the table measured for a group: the only steps the allocation picks."""
        return grid_widths(group_dense_width(group), int(self.key["points"]))

    def summary(self) -> Dict[str, Any]:
        return {"key": self.key, "key_hash": key_hash(self.key), "scale": self.scale,
                "dense_predicted_ms": round(self.predict_ms(dense_groups()), 4),
                "validation": self.data.get("validation"), "mean_abs_error": self.data.get("mean_abs_error"),
                "max_abs_error": self.data.get("max_abs_error")}


def validation_specs() -> List[Tuple[str, Groups]]:
    """Whole networks the scale is fitted on and the error reported for: uniform and lopsided widths."""
    dense = dense_groups()

    def scaled(mid: float, out: float, stem: float = 1.0) -> Groups:
        return {g: round_up(w * (stem if g == "stem" else out if g.endswith(".out") else mid))
                for g, w in dense.items()}

    return [("dense", dense), ("uniform-0.75", scaled(0.75, 0.75, 0.75)), ("uniform-0.5", scaled(0.5, 0.5, 0.5)),
            ("uniform-0.3", scaled(0.3, 0.3, 0.5)), ("mid-0.4", scaled(0.4, 1.0)), ("out-0.4", scaled(1.0, 0.4)),
            ("lopsided", scaled(0.25, 0.6, 0.5))]


def measure_network_ms(backend: Backend, groups: Groups, image_size: int, batch: int) -> float:
    return backend.time_network(groups, image_size, batch)


def build_table(backend: Backend, image_size: int, batch: int, points: int = DEFAULT_POINTS,
                log: Callable[[str], None] = print) -> LatencyTable:
    """Time every layer kind on its grid, then fit and check the end-to-end scale."""
    key = table_key(backend.name, backend.device(), backend.runtime_version(), image_size, batch,
                    backend.precision, points)
    started = time.perf_counter()
    kinds: Dict[str, Any] = {}
    for kind in layer_kinds(image_size):
        gin = [3] if kind.cin_group is None else grid_widths(_dense_width(kind, kind.cin_group), points)
        gout = grid_widths(_dense_width(kind, kind.cout_group), points)
        ms = []
        for cin in gin:
            row = []
            for cout in gout:
                row.append(round(backend.time_layer(kind, cin, cout, batch), 5))
            ms.append(row)
        kinds[kind.name] = {"cin": gin, "cout": gout, "ms": ms}
        log("latency table: {:<22} {}x{} widths, {:.3f}-{:.3f} ms".format(
            kind.name, len(gin), len(gout), min(min(r) for r in ms), max(max(r) for r in ms)))
    table = LatencyTable({"format": TABLE_FORMAT, "key": key, "kinds": kinds, "scale": 1.0})
    calibrate(table, backend, log)
    table.data["seconds"] = round(time.perf_counter() - started, 2)
    return table


def calibrate(table: LatencyTable, backend: Backend, log: Callable[[str], None] = print) -> None:
    """Fit the one scale factor on whole networks and record each one's prediction error."""
    size, batch = int(table.key["image_size"]), int(table.key["batch"])
    rows = []
    specs = validation_specs()
    for name, groups in specs:
        rows.append((name, measure_network_ms(backend, groups, size, batch), table.raw_ms(groups)))
    refit(table, [{"spec": name, "measured_ms": m, "layer_sum_ms": r,
                   "mparams": conv_mparams(groups, size)} for (name, m, r), (_, groups) in zip(rows, specs)], log)


def conv_mparams(groups: Groups, image_size: int) -> float:
    return sum((3 if gin is None else groups[gin]) * groups[gout] * kind.kernel ** 2
               for kind, gin, gout in layers(groups, image_size)) / 1e6


def refit(table: LatencyTable, rows: List[Dict[str, Any]], log: Callable[[str], None] = print) -> None:
    """Fit end-to-end = scale x (sum of layers) [+ w x conv weights], least squares on relative error.

    The weight term is there because isolated layers keep their weights in cache and a whole
    network does not: on a CPU a ResNet-50's 100 MB of FP32 weights stream from memory every
    inference, which the layer sum misses (one scale alone left +-25% errors on 2 cores; on an H200 one
    scale was enough). It is kept only when the fit makes it positive."""
    m = np.array([r["measured_ms"] for r in rows])
    raw = np.array([r["layer_sum_ms"] for r in rows])
    mp = np.array([r["mparams"] for r in rows])
    def one(x: np.ndarray) -> float:
        return float(np.sum(x / m) / np.sum((x / m) ** 2))

    scale, weight = one(raw), 0.0
    if len(rows) >= 3:  # non-negative least squares over the two terms (either may drop out)
        (a, b), *_ = np.linalg.lstsq(np.stack([raw / m, mp / m], axis=1), np.ones(len(rows)), rcond=None)
        if a > 0 and b > 0:
            scale, weight = float(a), float(b)
        elif b > 0:
            fit_b = one(mp)
            if np.sum((fit_b * mp / m - 1) ** 2) < np.sum((scale * raw / m - 1) ** 2):
                scale, weight = 0.0, fit_b
    validation = []
    for r in rows:
        predicted = scale * r["layer_sum_ms"] + weight * r["mparams"]
        error = predicted / r["measured_ms"] - 1.0
        validation.append({"spec": r["spec"], "measured_ms": round(r["measured_ms"], 4),
                           "predicted_ms": round(predicted, 4), "layer_sum_ms": round(r["layer_sum_ms"], 4),
                           "mparams": round(r["mparams"], 4), "error": round(error, 4)})
        log("latency table: {:<13} measured {:8.3f} ms, predicted {:8.3f} ms ({:+.1%})".format(
            r["spec"], r["measured_ms"], predicted, error))
    errors = [abs(v["error"]) for v in validation]
    table.data.update(scale=round(scale, 6), weight_ms_per_mparam=round(weight, 6), validation=validation,
                      mean_abs_error=round(float(np.mean(errors)), 4), max_abs_error=round(float(max(errors)), 4))
    log("latency table: scale {:.3f} x layer sum + {:.3f} ms per M weights; prediction error mean {:.1%}, "
        "max {:.1%} over {} width specs".format(scale, weight, table.data["mean_abs_error"],
                                                table.data["max_abs_error"], len(rows)))


def load_or_build(backend: Backend, image_size: int, batch: int, points: int = DEFAULT_POINTS,
                  folder: Optional[str] = None, log: Callable[[str], None] = print,
                  rebuild: bool = False) -> Tuple[LatencyTable, str]:
    key = table_key(backend.name, backend.device(), backend.runtime_version(), image_size, batch,
                    backend.precision, points)
    path = cache_path(key, folder)
    if os.path.exists(path) and not rebuild:
        table = LatencyTable.load(path)
        if table.key == key:
            log("latency table: reusing {} (scale {:.3f}, prediction error mean {:.1%})".format(
                path, table.scale, table.data.get("mean_abs_error") or 0.0))
            return table, path
    log("latency table: measuring {} layer kinds on {} ({}, {}x{}, batch {}, {}) -> {}".format(
        len(layer_kinds(image_size)), backend.name, key["device"], image_size, image_size, batch,
        backend.precision, path))
    table = build_table(backend, image_size, batch, points, log)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    table.save(path)
    return table, path
