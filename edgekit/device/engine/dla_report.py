"""Which layers run on DLA, which fell back to the GPU, and why: a summary of the builder's log.

TensorRT prints the placement after a DLA build in two generations of format:

    --------------- Layers running on DLA:           (8.0-8.4: subgraphs in braces)
    {conv1,bn1,relu}, {layer1.0.conv1,...}
    --------------- Layers running on GPU:
    Flatten_10, Gemm_11

    ---------- Layers Running on DLA ----------      (8.5+: one layer per line)
    [DlaLayer] {ForeignNode[/conv1/Conv.../layer4/layer4.2/relu_2/Relu]}
    ---------- Layers Running on GPU ----------
    [GpuLayer] SHUFFLE: /Flatten

and says why a layer left DLA in warnings such as "Default DLA is enabled but layer X is not
supported on DLA, falling back to GPU.", "Layer 'X' (TYPE): Unsupported on DLA. Switching this
layer's device type to GPU." or "DLA supports only 8 subgraphs per DLA core. Switching to GPU for
layer X", and for a dynamic profile "DLA Layer X does not support dynamic shapes in any dimension."
(every layer then runs on the GPU: DLA engines must have min = opt = max). Python 3.8 clean, no TensorRT needed.
"""

import re
from typing import Dict, List

# Each line of a TensorRT log starts with optional timestamps and tags: "[09/30/2020-13:12:43] [I] [TRT] "
_PREFIX = re.compile(r"^(?:\s*(?:\[\d[^\]]*\]|\[[VIWEF]\]|\[TRT\]:?|\[TensorRT\]|"
                     r"(?:INFO|WARNING|ERROR|VERBOSE):))*\s*")
_SECTION = re.compile(r"^-{3,}\s*Layers [Rr]unning on (DLA|GPU)\s*:?\s*-*\s*$")
_TAGGED = re.compile(r"^\[(DlaLayer|GpuLayer)\]\s*(.+)$")
_FALLBACKS = [
    re.compile(r"Default DLA is enabled but layer (?P<layer>.+?) is not (?:supported|running) on DLA, "
               r"falling back to GPU"),
    re.compile(r"Layer '(?P<layer>[^']+)' \((?P<type>[A-Z_]+)\): (?P<reason>.+?)\.? Switching this layer's "
               r"device type to GPU"),
    re.compile(r"(?P<reason>DLA supports only \d+ subgraphs per DLA core)\. Switching to GPU for layer "
               r"(?P<layer>\S+)"),
    # a dynamic profile (min < max): every layer leaves DLA; the engine must be rebuilt with one static batch
    re.compile(r"DLA Layer (?P<layer>.+?) (?P<reason>does not support dynamic shapes)(?: in any dimension)?\.?$"),
]
DYNAMIC_SHAPES = "does not support dynamic shapes"
_REASON_BEFORE = re.compile(r"^(?P<layer>[^\s:]+): (?P<reason>.*DLA.*)$")


def _strip(line: str) -> str:
    return _PREFIX.sub("", line.rstrip("\n")).strip()


def _split_top_level(text: str) -> List[str]:
    """Split on commas outside braces and brackets."""
    items, depth, current = [], 0, []
    for ch in text:
        if ch in "{[(":
            depth += 1
        elif ch in "}])":
            depth -= 1
        if ch == "," and depth == 0:
            items.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    if "".join(current).strip():
        items.append("".join(current).strip())
    return [i for i in items if i]


def parse_dla_log(text: str) -> Dict[str, object]:
    """{dla: [subgraphs/layers], gpu: [layers], fallbacks: {layer: reason}, reasons: {reason: count}}."""
    dla: List[str] = []
    gpu: List[str] = []
    fallbacks: Dict[str, str] = {}
    last_reason: Dict[str, str] = {}
    section = None
    for raw in text.splitlines():
        line = _strip(raw)
        if not line:
            continue
        header = _SECTION.match(line)
        if header:
            section = header.group(1)
            continue
        tagged = _TAGGED.match(line)
        if tagged:
            (dla if tagged.group(1) == "DlaLayer" else gpu).append(tagged.group(2).strip())
            continue
        matched = False
        for pattern in _FALLBACKS:
            found = pattern.search(line)
            if found:
                layer = found.group("layer").strip()
                reason = found.groupdict().get("reason") or last_reason.get(layer) or "not supported on DLA"
                fallbacks[layer] = reason.strip()
                if found.groupdict().get("reason"):
                    last_reason[layer] = reason.strip()  # the "Default DLA ... falling back" line that follows
                matched = True
                break
        if matched:
            continue
        before = _REASON_BEFORE.match(line)
        if before:
            last_reason[before.group("layer")] = before.group("reason").rstrip(".")
            continue
        # Old-format sections list layers separated by commas ("{a,b}, {c}," or "x, y,"); the first
        # line without a comma ends the section.
        if section is not None and "," in line:
            (dla if section == "DLA" else gpu).extend(_split_top_level(line))
        else:
            section = None
    reasons: Dict[str, int] = {}
    for reason in fallbacks.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    return {"dla": dla, "gpu": gpu, "fallbacks": fallbacks,
            "reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
            "dynamic_shapes": DYNAMIC_SHAPES in reasons}


def summarize(report: Dict[str, object], limit: int = 5) -> str:
    """A few lines a person reads, instead of the wall of warnings."""
    dla, gpu, reasons = report["dla"], report["gpu"], report["reasons"]
    lines = ["DLA: {} subgraph(s)/layer(s); GPU: {} layer(s); {} fell back from DLA".format(
        len(dla), len(gpu), len(report["fallbacks"]))]
    for reason, count in list(reasons.items())[:limit]:
        examples = [layer for layer, r in report["fallbacks"].items() if r == reason][:3]
        lines.append("  {} x {} (e.g. {})".format(count, reason, ", ".join(examples)))
    if report.get("dynamic_shapes"):
        lines.append("  the engine has a dynamic batch profile, so DLA ran nothing: rebuild it with one static "
                     "batch (--batch B)")
    if gpu and not reasons:
        lines.append("  on the GPU: {}".format(", ".join(gpu[:limit])))
    return "\n".join(lines)
