"""Where and in what precision a training run computes: the device, the autocast dtype, the layout.

A recipe's `train.precision: bf16` is a request. On a CPU without native bf16 arithmetic (x86 with
neither AVX-512 BF16 nor AMX, ARM without the BF16 extension) PyTorch emulates it, and one ResNet-50
step at batch 8 and 64 px took 6-7x as long as in fp32 on an AVX2 box (12.7 s against 1.9 s). The same
holds on a CPU that has bf16 when ATEN_CPU_CAPABILITY or ONEDNN_MAX_CPU_ISA holds PyTorch's kernels to
an ISA without it (2.69 s against 0.27 s here, held to AVX2). So a stage resolves the request for its
device (`for_stage`) and says once what it runs; the `Trainer` runs what it is given.
"""

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from ...recipe import TrainConfig
from ..dist import Dist, resolve_device
from ..dist import current as current_dist

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
# The instruction sets that compute bf16 natively, by the names torch.cpu.get_capabilities() and
# /proc/cpuinfo use (x86: avx512_bf16, amx_bf16; ARM: bf16 in the Features line, sve_bf16 in torch).
_NATIVE_BF16 = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")


def autocast_dtype(precision: str) -> Optional[torch.dtype]:
    return _AUTOCAST[precision]


def _cpuinfo_flags(path: str = "/proc/cpuinfo") -> Mapping[str, bool]:
    """The first processor's flags (x86 `flags`, ARM `Features`); empty where the file is missing."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() in ("flags", "Features"):
                    return {flag: True for flag in value.split()}
    except OSError:
        pass
    return {}


def cpu_capabilities() -> Mapping[str, Any]:
    """torch's own detection (torch.cpu.get_capabilities, where this torch has it), else /proc/cpuinfo."""
    query = getattr(torch.cpu, "get_capabilities", None)
    if query is not None:
        try:
            return query()
        except Exception:  # noqa: BLE001 - a failed probe means: ask the kernel instead
            pass
    return _cpuinfo_flags()


# Environment variables that hold PyTorch's CPU kernels below the hardware: ATen's dispatch level and
# oneDNN's (convolutions, matmuls) ISA ceiling. Either one set to an ISA without bf16 makes bf16 emulated.
_ATEN_NO_BF16 = ("default", "no_avx", "avx", "avx2")
_ONEDNN_BF16 = ("BF16", "AMX", "FP16", "AVX10", "ALL", "DEFAULT")


def _held_below_bf16(environ: Mapping[str, str]) -> Optional[str]:
    """The variable holding the CPU kernels to an ISA without bf16, as `NAME=value`, or None."""
    aten = environ.get("ATEN_CPU_CAPABILITY", "").strip()
    if aten.lower() in _ATEN_NO_BF16:
        return "ATEN_CPU_CAPABILITY=" + aten
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        ceiling = environ.get(name, "").strip()
        if ceiling and not any(word in ceiling.upper() for word in _ONEDNN_BF16):
            return "{}={}".format(name, ceiling)
    return None


def cpu_has_native_bf16(capabilities: Optional[Mapping[str, Any]] = None) -> bool:
    found = cpu_capabilities() if capabilities is None else capabilities
    return any(bool(found.get(name)) for name in _NATIVE_BF16)


def resolve_precision(
    precision: str,
    device: torch.device,
    capabilities: Optional[Mapping[str, Any]] = None,
    environ: Optional[Mapping[str, str]] = None,
) -> Tuple[str, Optional[str]]:
    """(the precision to run, why it differs from the one asked for, or None)."""
    if precision != "bf16" or device.type != "cpu":
        return precision, None
    if not cpu_has_native_bf16(capabilities):
        return "fp32", (
            "bf16 asked for: this CPU has no native bf16, no AVX-512 BF16 or AMX, and emulates it "
            "several times slower; set train.precision: fp32 to silence this"
        )
    held = _held_below_bf16(os.environ if environ is None else environ)
    if held:
        return "fp32", (
            "bf16 asked for: {} holds PyTorch's CPU kernels to an ISA without bf16, which "
            "emulates it several times slower; unset it or set train.precision: fp32".format(held)
        )
    return precision, None


@dataclass(frozen=True)
class Placement:
    """One run's device, precision and layout, and the process count it runs with."""

    device: torch.device
    precision: str
    channels_last: bool
    world_size: int = 1
    requested: Optional[str] = None  # the recipe's precision, when it was not `precision`
    note: Optional[str] = None  # why

    @classmethod
    def of(cls, cfg: TrainConfig, dist: Optional[Dist] = None) -> "Placement":
        """Exactly what `cfg` says (precision included), on the device `dist.setup` chose."""
        d = dist or current_dist()
        device = d.device or resolve_device(cfg.device)
        channels_last = device.type == "cuda" if cfg.channels_last is None else bool(cfg.channels_last)
        return cls(device=device, precision=cfg.precision, channels_last=channels_last, world_size=d.world_size)

    @property
    def dtype(self) -> Optional[torch.dtype]:
        return autocast_dtype(self.precision)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def line(self) -> str:
        """`train: cpu, fp32, 1 process`, with the reason when the precision was changed."""
        return "train: {}, {}, {} process{}{}".format(
            self.device,
            self.precision,
            self.world_size,
            "" if self.world_size == 1 else "es",
            " ({})".format(self.note) if self.note else "",
        )

    def record(self) -> Dict[str, Any]:
        """The summary's `train` facts (the precision that ran; the one asked for when it differs)."""
        found = {"device": str(self.device), "precision": self.precision, "world_size": self.world_size}
        if self.requested:
            found["requested_precision"] = self.requested
        return found


def for_stage(
    cfg: TrainConfig, dist: Optional[Dist] = None, capabilities: Optional[Mapping[str, Any]] = None
) -> Tuple[TrainConfig, Placement]:
    """The recipe's train section resolved for this device: (the TrainConfig to train with, its Placement)."""
    exact = Placement.of(cfg, dist)
    precision, note = resolve_precision(cfg.precision, exact.device, capabilities)
    if note is None:
        return cfg, exact
    return (
        dataclasses.replace(cfg, precision=precision),
        dataclasses.replace(exact, precision=precision, requested=cfg.precision, note=note),
    )
