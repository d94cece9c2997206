"""Per-layer latency lookup tables: built on a backend, cached on disk, calibrated end to end.

Each layer kind of the network's description (`net.py`: ResNet-50's 25 built in, any other
architecture's from its own convolution, linear and squeeze-excite shapes) is timed on a grid of
(input, output) widths: `points` widths per axis, evenly spread fractions of the dense width
(k/points, rounded up to a multiple of 8), so 8 points measure every 12.5% of each group; a depthwise
kind, whose input and output are one group, is timed on the diagonal only. A coarse full grid rather
than a few widths per layer and a fitted curve, because the point is to *see* the staircase (on a GPU
128 channels can run faster than 112, as measured on an H200) and a fitted curve would smooth it away;
off-grid widths (students pruned to a MACs target) are read by bilinear interpolation. On 2 CPU
cores the 8x8 grid costs about a minute at 224x224 for ResNet-50; the allocation only ever picks grid
widths, so what it chooses was measured, not interpolated.

The sum of the isolated layers misses what the layers do not show alone (pooling, the classifier,
launch overheads, caches warmed by the previous layer, weights streamed from memory): end-to-end
latency is fitted as `scale x (sum of the layers) + ms per million weights x weights`, least
squares on whole networks of several width specs, and the table keeps each spec's prediction error.

Tables are cached by backend, device, runtime version, input size, batch, precision, grid and the
layer description (so another architecture, or another class count, is another table): change any
of them and the key changes. A table carries its description, so the device can time the same
layers from the table file alone.
"""

import json
import math
import os
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ...artifacts import config_hash, write_json_atomic
from ...errors import EdgekitError
from .backends import Backend, cache_dir
from .layers import resnet50_net
from .net import Groups, LayerKind, Net

TABLE_FORMAT = "edgekit.latency-table/3"  # /3: the layer description inside (/2 tables are ResNet-50's)
READS = (TABLE_FORMAT, "edgekit.latency-table/2")
DEFAULT_POINTS = 8


def round_up(value: float, multiple: int = 8) -> int:
    return int(max(multiple, multiple * math.ceil(value / float(multiple) - 1e-9)))


def grid_widths(dense: int, points: int = DEFAULT_POINTS) -> List[int]:
    return sorted({min(dense, round_up(dense * k / float(points))) for k in range(1, points + 1)})


def _dense_width(kind: LayerKind, group: Optional[str]) -> int:
    if group is None:
        return 3
    return kind.cin if group == kind.cin_group else kind.cout


def kind_cells(kind: LayerKind, points: int) -> Tuple[List[int], List[int], bool]:
    """The widths a kind is timed at: (input widths, output widths, diagonal). A fixed side (the
    image, the classes) is its dense width alone; a depthwise kind's two sides are one group."""
    gin = [kind.cin or 3] if kind.cin_fixed else grid_widths(kind.cin, points)
    gout = [kind.cout] if kind.cout_fixed else grid_widths(kind.cout, points)
    return gin, gout, kind.depthwise


def layers_hash(net: Net) -> str:
    return config_hash(net.to_dict())[:16]


def table_key(backend: str, device: str, runtime: str, image_size: int, batch: int, precision: str,
              points: int, net: Optional[Net] = None) -> Dict[str, Any]:
    net = net or resnet50_net(image_size)
    return {"format": TABLE_FORMAT, "arch": net.arch, "layers": layers_hash(net), "backend": backend,
            "device": device, "runtime": runtime, "image_size": int(image_size), "batch": int(batch),
            "precision": precision, "points": int(points)}


def key_hash(key: Dict[str, Any]) -> str:
    return config_hash(key)[:16]


def cache_path(key: Dict[str, Any], folder: Optional[str] = None) -> str:
    return os.path.join(folder or cache_dir(), "{}-{}.json".format(key["backend"], key_hash(key)))


class LatencyTable(object):
    """Measured milliseconds per layer kind on a (cin, cout) grid, plus the end-to-end fit."""

    def __init__(self, data: Dict[str, Any]) -> None:
        if data.get("format") not in READS:
            raise EdgekitError("not a latency table (format {!r}, expected {})".format(data.get("format"),
                                                                                     TABLE_FORMAT))
        self.data = data
        self.net = Net.from_dict(data["net"]) if data.get("net") else resnet50_net(int(data["key"]["image_size"]))
        self.kinds = self.net.kinds
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
        if ms.ndim == 1:  # a depthwise kind: timed on the diagonal, where cin == cout
            return float(np.interp(cout, gout, ms))
        # Bilinear on the grid (exact at grid points, which is all the allocation ever asks for).
        along_out = np.array([np.interp(cout, gout, row) for row in ms])
        return float(np.interp(cin, gin, along_out)) if len(gin) > 1 else float(along_out[0])

    @property
    def weight_ms(self) -> float:
        """Calibrated ms per million weights (0 unless the fit found weight traffic)."""
        return float(self.data.get("weight_ms_per_mparam") or 0.0)

    def layer_cost(self, kind: str, cin: int, cout: int) -> float:
        """One layer's share of the end-to-end prediction."""
        return self.scale * self.layer_ms(kind, cin, cout) + self.weight_ms * self.kinds[kind].weights(cin, cout) / 1e6

    def _widths(self, groups: Groups) -> List[Tuple[str, int, int]]:
        net = self.net
        return [(kind, net.width(groups, gin), net.width(groups, gout)) for _, kind, gin, gout in net.layers]

    def raw_ms(self, groups: Groups) -> float:
        """The sum of the isolated layers, uncalibrated."""
        return sum(self.layer_ms(kind, cin, cout) for kind, cin, cout in self._widths(groups))

    def predict_ms(self, groups: Groups) -> float:
        return sum(self.layer_cost(kind, cin, cout) for kind, cin, cout in self._widths(groups))

    def widths(self, group: str) -> List[int]:
        """The widths the table measured for a group: the only steps the allocation picks."""
        return grid_widths(int(self.net.groups[group]["dense"]), int(self.key["points"]))

    def summary(self) -> Dict[str, Any]:
        return {"key": self.key, "key_hash": key_hash(self.key), "scale": self.scale,
                "weight_ms_per_mparam": self.weight_ms, "kinds": len(self.kinds), "layers": len(self.net.layers),
                "dense_predicted_ms": round(self.predict_ms(self.net.dense_groups()), 4),
                "validation": self.data.get("validation"), "mean_abs_error": self.data.get("mean_abs_error"),
                "max_abs_error": self.data.get("max_abs_error"), "seconds": self.data.get("seconds")}


def validation_specs(net: Optional[Net] = None) -> List[Tuple[str, Groups]]:
    """Whole networks the fit is made on and the error reported for: uniform and lopsided widths."""
    net = net or resnet50_net(224)
    dense = net.dense_groups()
    if net.ops is None:  # ResNet-50: its blocks' middles and its stage outputs shrunk apart
        def scaled(mid: float, out: float, stem: float = 1.0) -> Groups:
            return {g: round_up(w * (stem if g == "stem" else out if g.endswith(".out") else mid))
                    for g, w in dense.items()}

        return [("dense", dense), ("uniform-0.75", scaled(0.75, 0.75, 0.75)), ("uniform-0.5", scaled(0.5, 0.5, 0.5)),
                ("uniform-0.3", scaled(0.3, 0.3, 0.5)), ("mid-0.4", scaled(0.4, 1.0)), ("out-0.4", scaled(1.0, 0.4)),
                ("lopsided", scaled(0.25, 0.6, 0.5))]
    names = list(dense)
    rng = np.random.default_rng(0)
    random = {g: float(f) for g, f in zip(names, rng.uniform(0.25, 1.0, len(names)))}

    def shrunk(fraction: Callable[[int, str], float]) -> Groups:
        return {g: min(w, round_up(w * fraction(i, g))) for i, (g, w) in enumerate(dense.items())}

    return [("dense", dense), ("uniform-0.75", shrunk(lambda i, g: 0.75)), ("uniform-0.5", shrunk(lambda i, g: 0.5)),
            ("uniform-0.3", shrunk(lambda i, g: 0.3)), ("even-0.4", shrunk(lambda i, g: 0.4 if i % 2 == 0 else 1.0)),
            ("odd-0.4", shrunk(lambda i, g: 0.4 if i % 2 else 1.0)), ("random", shrunk(lambda i, g: random[g]))]


def _time_kind(backend: Backend, kind: LayerKind, points: int, batch: int) -> Dict[str, Any]:
    gin, gout, diagonal = kind_cells(kind, points)
    if diagonal:
        ms = [round(v, 5) for v in backend.time_cells(kind, [(w, w) for w in gout], batch)]
        return {"cin": gout, "cout": gout, "ms": ms}
    flat = backend.time_cells(kind, [(cin, cout) for cin in gin for cout in gout], batch)
    return {"cin": gin, "cout": gout, "ms": [[round(v, 5) for v in flat[i * len(gout):(i + 1) * len(gout)]]
                                             for i in range(len(gin))]}


def build_table(backend: Backend, image_size: int, batch: int, points: int = DEFAULT_POINTS,
                log: Callable[[str], None] = print, net: Optional[Net] = None) -> LatencyTable:
    """Time every layer kind on its grid, then fit and check the end-to-end prediction."""
    net = net or resnet50_net(image_size)
    key = table_key(backend.name, backend.device(), backend.runtime_version(), image_size, batch,
                    backend.precision, points, net)
    started = time.perf_counter()
    kinds: Dict[str, Any] = {}
    for kind in net.kinds.values():
        kinds[kind.name] = entry = _time_kind(backend, kind, points, batch)
        flat = np.ravel(entry["ms"])
        log("latency table: {:<22} {}x{} widths, {:.3f}-{:.3f} ms".format(
            kind.name, len(entry["cin"]) if np.ndim(entry["ms"]) == 2 else 1, len(entry["cout"]),
            float(flat.min()), float(flat.max())))
    data = {"format": TABLE_FORMAT, "key": key, "kinds": kinds, "scale": 1.0}
    if net.ops is not None:  # ResNet-50's built-in description needs no copy
        data["net"] = net.to_dict()
    table = LatencyTable(data)
    calibrate(table, backend, log)
    table.data["seconds"] = round(time.perf_counter() - started, 2)
    return table


def calibrate(table: LatencyTable, backend: Backend, log: Callable[[str], None] = print,
              rounds: int = 3) -> None:
    """Fit the layer sum and the weight term on whole networks and record each one's prediction error.

    The networks are timed in turn, `rounds` times, and each keeps its fastest window: a burst from
    another process then slows one window, not the fit (one window each left a 44% outlier on 2 shared
    cores)."""
    batch = int(table.key["batch"])
    specs = validation_specs(table.net)
    timers = [backend.network_timer(table.net, groups, batch) for _, groups in specs]
    best = [float("inf")] * len(specs)
    for _ in range(rounds):
        for i, timer in enumerate(timers):
            best[i] = min(best[i], timer())
    rows = [{"spec": name, "measured_ms": ms, "layer_sum_ms": table.raw_ms(groups),
             "mparams": weight_mparams(table.net, groups)} for (name, groups), ms in zip(specs, best)]
    refit(table, rows, log)


def weight_mparams(net: Net, groups: Groups) -> float:
    return sum(kind.weights(net.width(groups, gin), net.width(groups, gout))
               for kind, gin, gout in net.kind_layers()) / 1e6


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
                  rebuild: bool = False, net: Optional[Net] = None) -> Tuple[LatencyTable, str]:
    """The cached table for this backend and description (ResNet-50's by default), else a new one."""
    net = net or resnet50_net(image_size)
    if net.image_size != image_size:
        raise EdgekitError("the layer description is for {0}x{0} inputs, not {1}x{1}: describe the model at the "
                           "latency image size".format(net.image_size, image_size))
    key = table_key(backend.name, backend.device(), backend.runtime_version(), image_size, batch,
                    backend.precision, points, net)
    path = cache_path(key, folder)
    if os.path.exists(path) and not rebuild:
        table = LatencyTable.load(path)
        if table.key == key:
            log("latency table: reusing {} (scale {:.3f}, prediction error mean {:.1%})".format(
                path, table.scale, table.data.get("mean_abs_error") or 0.0))
            return table, path
    log("latency table: measuring {} layer kinds of {} ({} layers) on {} ({}, {}x{}, batch {}, {}) -> {}".format(
        len(net.kinds), net.arch, len(net.layers), backend.name, key["device"], image_size, image_size, batch,
        backend.precision, path))
    table = build_table(backend, image_size, batch, points, log, net=net)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    table.save(path)
    log("latency table: built in {:.1f} s".format(table.data["seconds"]))
    return table, path
