"""Deployment targets: what a device is and what to measure on it.

Shipped in `edgekit/presets/targets/*.yaml`; the user's own `./deploy/targets/` wins on a name clash.

Validated like recipes: every field has a default, unknown keys are errors that list the valid
ones. Python 3.8 clean and torch-free: the device-side CLI reads targets too.
"""

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from .device.layout import PLACEMENTS, PRECISIONS
from .errors import EdgekitError
from .presets import find_preset, preset_names
from .recipe import _build, _choice, read_yaml_mapping

HANDOFFS = ("deepstream", "triton")


@dataclass
class Target:
    name: str = "cpu"
    description: str = ""
    arch: str = _choice("native", "native", "aarch64", "x86_64")
    jetpack: Optional[str] = None
    l4t: Optional[str] = None          # the device's /etc/nv_tegra_release must match (R35.4.1)
    tensorrt: Optional[str] = None
    python: Optional[str] = None       # major.minor the device's interpreter must be (3.8)
    python_bin: Optional[str] = None   # the device's interpreter (default python3; deploy --device-python wins)
    cuda_arch: Optional[str] = None
    dla_cores: int = 0
    nvpmodel: Optional[int] = None     # the expected power mode (recorded, never set silently)
    # The rails whose sum is the board's power (AGX Orin: three of its four; VDDQ_VDD2_1V8AO is inside
    # VIN_SYS_5V0). Empty: every rail the board reports.
    power_rails: List[str] = field(default_factory=list)
    # How the board's total power is read: "sum" adds the rails (`power_rails` when named), or the name of
    # a rail that already is the total (VDD_IN on Orin NX/Nano, POM_5V_IN on Nano).
    power_total: str = "sum"
    # how the device side starts there: natively, or in `image` under Docker (`runtime:` in older files)
    launch: str = _choice("native", "native", "docker")
    image: Optional[str] = None        # docker image to run the device side in
    precisions: List[str] = field(default_factory=lambda: ["fp32"])
    batches: List[int] = field(default_factory=lambda: [1, 2, 4, 8])
    placements: List[str] = field(default_factory=lambda: ["cpu"])
    # loadgen: every job also runs under MLPerf LoadGen (its logs, VALID/INVALID) beside edgekit's own bench
    harness: str = _choice("edgekit", "edgekit", "loadgen")
    # hand-off packages built on the device from each measured model and fetched home beside its result
    handoff: List[str] = field(default_factory=list)

    def validate(self) -> "Target":
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise EdgekitError("target {}: {}".format(self.name, msg))

        bad = [p for p in self.placements if p not in PLACEMENTS]
        need(not bad, "placements must be among {}, got {}".format(", ".join(PLACEMENTS), ", ".join(bad)))
        bad = [p for p in self.precisions if p not in PRECISIONS]
        need(not bad, "precisions must be among {}, got {}".format(", ".join(PRECISIONS), ", ".join(bad)))
        need(bool(self.batches) and all(b >= 1 for b in self.batches), "batches must be positive")
        dla = [p for p in self.placements if p.startswith("dla")]
        need(all(int(p[3:]) < self.dla_cores for p in dla),
             "placements name DLA cores the target does not have (dla_cores: {})".format(self.dla_cores))
        need(self.launch != "docker" or bool(self.image), "launch docker needs an image")
        need(bool(self.power_total) and not any(c.isspace() or c in "\"'$`;" for c in self.power_total),
             "power_total must be sum or one rail's name (VDD_IN), got {!r}".format(self.power_total))
        bad = [r for r in self.power_rails if not r or any(c.isspace() or c in "+\"'$`;" for c in r)]
        need(not bad, "power_rails must be rail names (VDD_GPU_SOC), got {!r}".format(bad))
        bad = [h for h in self.handoff if h not in HANDOFFS]
        need(not bad, "handoff must list among {}, got {}".format(", ".join(HANDOFFS), ", ".join(bad)))
        need(self.python_bin is None or (bool(self.python_bin.strip()) and not self.python_bin.startswith("-")),
             "python_bin must be an interpreter path or name, got {!r}".format(self.python_bin))
        return self

    def power_total_rule(self) -> str:
        """The bench's --power-total: the named rails joined by "+" when the sum is of `power_rails`."""
        if self.power_total == "sum" and self.power_rails:
            return "+".join(self.power_rails)
        return self.power_total

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def available_targets() -> List[str]:
    return preset_names("target")


def resolve_target_path(name_or_path: str) -> str:
    path = find_preset("target", name_or_path)
    if path is None:
        raise EdgekitError("unknown target {!r}; available: {}".format(name_or_path, ", ".join(available_targets())))
    return path


# old key -> its name now (`runtime` also meant the runners, onnxruntime and TensorRT)
OLD_KEYS = {"runtime": "launch"}


def _renamed(data: Dict[str, Any], path: str) -> Dict[str, Any]:
    data = dict(data)
    for old, new in OLD_KEYS.items():
        if old in data:
            if new in data:
                raise EdgekitError("target {}: {}: is the old name of {}:; keep only {}:".format(
                    os.path.basename(path), old, new, new))
            data[new] = data.pop(old)
    return data


def load_target(name_or_path: str) -> Target:
    path = resolve_target_path(name_or_path)
    data = _renamed(read_yaml_mapping(path, "target"), path)
    try:
        return _build(Target, data).validate()
    except EdgekitError as exc:
        raise EdgekitError(str(exc).replace("recipe: ", "target {}: ".format(os.path.basename(path)), 1)) from None
