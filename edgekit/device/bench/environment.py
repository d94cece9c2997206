"""What a result was measured on: device, L4T/JetPack, runtime versions, power mode, clocks, CPU.

Read only: the power state is recorded, never changed. Every reader takes a `root` so the Jetson
files can be faked in tests. Python 3.8 clean, no torch.
"""

import glob
import os
import platform
import re
import shutil
import subprocess
import sys
from typing import Dict, Optional

from .sysfs import read_optional as _read


def parse_l4t_release(text: str) -> Optional[str]:
    """`R35.4.1` from `# R35 (release), REVISION: 4.1, GCID: ...` (REVISION: 4 -> R35.4.0), None when the text
    is no L4T release line. Deploy's check and every result and engine record read it the same way."""
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)(?:\.(\d+))?", text or "")
    if not match:
        return None
    return "R{}.{}.{}".format(match.group(1), match.group(2), match.group(3) or "0")


def l4t_release(root: str = "/") -> Optional[str]:
    """The board's release from /etc/nv_tegra_release (see parse_l4t_release)."""
    return parse_l4t_release(_read(os.path.join(root, "etc/nv_tegra_release")) or "")


def device_model(root: str = "/") -> Optional[str]:
    return _read(os.path.join(root, "proc/device-tree/model"))


def cpu_model(root: str = "/") -> str:
    text = _read(os.path.join(root, "proc/cpuinfo")) or ""
    for line in text.splitlines():
        if line.lower().startswith(("model name", "hardware")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def nvpmodel_mode(command: str = "nvpmodel") -> Optional[Dict[str, str]]:
    """`nvpmodel -q` prints `NV Power Mode: MAXN` then the mode number."""
    exe = shutil.which(command)
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-q"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             universal_newlines=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_nvpmodel(out)


def parse_nvpmodel(text: str) -> Optional[Dict[str, str]]:
    name = re.search(r"NV Power Mode:\s*(\S+)", text)
    number = re.search(r"^\s*(\d+)\s*$", text, re.MULTILINE)
    if not name:
        return None
    return {"name": name.group(1), "id": number.group(1) if number else ""}


GPU_DEVFREQ = ("sys/class/devfreq/*gv11b*", "sys/class/devfreq/*ga10b*", "sys/class/devfreq/*gp10b*",
               "sys/class/devfreq/*.gpu", "sys/devices/gpu.0/devfreq/*", "sys/devices/platform/gpu.0/devfreq/*")


def gpu_clocks(root: str = "/") -> Optional[Dict[str, object]]:
    """GPU devfreq cur/min/max (Hz); `locked` when min == max, as jetson_clocks leaves it.

    Xavier's GPU is `17000000.gv11b`, Orin's `17000000.ga10b` on JetPack 5 and `17000000.gpu` on
    JetPack 6, TX2's `17000000.gp10b`, Nano's `57000000.gpu`.
    """
    for pattern in GPU_DEVFREQ:
        for folder in sorted(glob.glob(os.path.join(root, pattern))):
            values: Dict[str, object] = {}
            for key in ("cur_freq", "min_freq", "max_freq"):
                text = _read(os.path.join(folder, key))
                if text is None or not text.isdigit():
                    break
                values[key] = int(text)
            else:
                values["locked"] = values["min_freq"] == values["max_freq"]
                values["device"] = os.path.basename(folder)
                return values
    return None


def collect(root: str = "/", threads: Optional[int] = None, runtime: Optional[Dict[str, str]] = None,
            precision: Optional[str] = None) -> Dict[str, object]:
    clocks = gpu_clocks(root)
    env = {
        "hostname": platform.node(), "machine": platform.machine(), "os": platform.platform(),
        "python": platform.python_version(), "cpu": cpu_model(root), "cpu_count": os.cpu_count(),
        "device_model": device_model(root), "l4t": l4t_release(root),
        "nvpmodel": nvpmodel_mode() if root == "/" else None,
        "gpu_clocks": clocks,
        "jetson_clocks": (None if clocks is None else ("on" if clocks["locked"] else "off")),
        "threads": threads, "precision": precision, "command": " ".join(sys.argv),
    }
    if runtime:
        env["runtime"] = dict(runtime)
    return env
