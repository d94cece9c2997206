"""The TensorRT and CUDA calls of edgekit checked against the libraries' own API, without a GPU.

    python .ci/typecheck.py              # install what it needs (once), check, report
    python .ci/typecheck.py --install    # only install (make venv does this, for tests/test_trt_fakes.py)

- tensorrt-stubs (the TensorRT 10.13 Python API as .pyi) is installed --no-deps into
  .venv/typecheck/site: its one dependency is the real bindings, which do not install here, and a
  `tensorrt` folder of stubs must not become importable as tensorrt in the venv either.
  Five of its lines are not valid Python (pybind11-stubgen wrote plugin parameters named `in`, and one
  parameter without a default after defaults): they are repaired mechanically in the copy mypy reads.
- cuda-python's runtime bindings are compiled, without stubs: a stub is written from the installed
  module itself (every function with its parameters, every enum with its members), so a misspelt
  function, a wrong argument count or an unknown enum member is an error.
- mypy (pinned in pyproject's dev extra) checks every module that calls TensorRT, with
  --check-untyped-defs, and the calls it resolved against those stubs are counted and printed.

Python 3.11 here (the host); what it checks is the device side's code.
"""

import argparse
import enum
import glob
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOME = os.path.join(sys.prefix, "typecheck")  # inside the venv that runs it (make: .venv)
SITE, STUBS = os.path.join(HOME, "site"), os.path.join(HOME, "stubs")
PINS = ["tensorrt-stubs==10.13.0.35.1"]
# cuda-python's bindings: torch's CUDA build brings them into the venv; else these, into their own folder
CUDA_PINS = ["cuda-bindings==13.5.0", "cuda-pathfinder==1.9.1"]
CHECKED = ["edgekit/device/engine/api.py", "edgekit/device/engine/builder.py", "edgekit/device/engine/device.py",
           "edgekit/device/runtime/tensorrt.py"]
OURS = ("tensorrt", "tensorrt_bindings", "cuda.bindings.runtime")


def install() -> None:
    """tensorrt-stubs into SITE (once per pin), then the repaired copy and the cuda-python stub into STUBS."""
    stamp = os.path.join(HOME, "installed")
    if not os.path.exists(stamp) or open(stamp).read().split() != PINS:
        shutil.rmtree(HOME, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", SITE] + PINS,
                       check=True)
        with open(stamp, "w") as f:
            f.write(" ".join(PINS))
    if os.path.isdir(STUBS):
        shutil.rmtree(STUBS)
    for package in ("tensorrt", "tensorrt_bindings"):
        shutil.copytree(os.path.join(SITE, package), os.path.join(STUBS, package),
                        ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    repair(os.path.join(STUBS, "tensorrt_bindings", "tensorrt.pyi"))
    write_runtime_stub(os.path.join(STUBS, "cuda", "bindings"))


def repair(path: str) -> None:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    text = re.sub(r"(\(|, )in: ", r"\1in_: ", text)  # `in` is a keyword: plugin APIs edgekit never calls
    text = text.replace("power: Weights = None, channel_axis: int)", "power: Weights = None, channel_axis: int = ...)")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _parameters(function: object, classes: Dict[str, type]) -> str:
    try:
        signature = inspect.signature(function)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "*args: Any, **kwargs: Any"
    parts = []
    for p in signature.parameters.values():
        note = p.annotation if isinstance(p.annotation, str) and p.annotation in classes else "Any"
        parts.append("{}: {}{}".format(p.name, note, " = ..." if p.default is not p.empty else ""))
    return ", ".join(parts)


def _cuda_runtime():  # noqa: ANN202
    try:
        from cuda.bindings import runtime
    except ImportError:
        folder = os.path.join(HOME, "cuda")
        if not os.path.isdir(folder):
            subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", folder]
                           + CUDA_PINS, check=True)
        sys.path.insert(0, folder)
        from cuda.bindings import runtime
    return runtime


def runtime_stub_text() -> str:
    runtime = _cuda_runtime()

    names = sorted(n for n in dir(runtime) if not n.startswith("_") and
                   getattr(getattr(runtime, n), "__module__", runtime.__name__) in (runtime.__name__, None))
    classes = {n: getattr(runtime, n) for n in names if inspect.isclass(getattr(runtime, n))}
    lines = ["# Written by .ci/typecheck.py from the installed cuda.bindings.runtime: names, parameters, members.",
             "import enum", "from typing import Any", ""]
    for name in names:
        value = getattr(runtime, name)
        if name in classes and (issubclass(value, enum.Enum) or hasattr(value, "__members__")):
            lines.append("class {}(enum.IntEnum):".format(name))
            lines += ["    {} = {}".format(member, int(m)) for member, m in value.__members__.items()] or ["    ..."]
        elif name in classes:
            lines += ["class {}:".format(name), "    def __init__(self, *args: Any, **kwargs: Any) -> None: ...",
                      "    def __int__(self) -> int: ...", "    def __getattr__(self, name: str) -> Any: ..."]
        elif callable(value):
            lines.append("def {}({}) -> Any: ...".format(name, _parameters(value, classes)))
        else:
            lines.append("{}: {}".format(name, type(value).__name__ if isinstance(value, (int, str)) else "Any"))
    return "\n".join(lines) + "\n"


def write_runtime_stub(folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    for init in (os.path.join(folder, "..", "__init__.pyi"), os.path.join(folder, "__init__.pyi")):
        open(init, "w").close()
    with open(os.path.join(folder, "runtime.pyi"), "w") as f:
        f.write(runtime_stub_text())


def check() -> Tuple[List[str], Dict[str, int]]:
    """mypy over CHECKED against STUBS: (its error lines, {what: count} of the uses resolved in the stubs)."""
    from mypy import api

    cache = os.path.join(HOME, "mypy-cache")
    for path in CHECKED:  # checked afresh each time: the counting plugin sees only what mypy checks
        for stale in glob.glob(os.path.join(cache, "*", path[:-3] + ".*")):
            os.remove(stale)
    uses = os.path.join(HOME, "uses.jsonl")
    if os.path.exists(uses):
        os.remove(uses)
    config = os.path.join(HOME, "mypy.ini")
    with open(config, "w") as f:
        # the stubs themselves do not pass mypy (pybind11-stubgen's `bool` and `capsule`): only their API is used
        f.write("[mypy]\nplugins = {}\n[mypy-tensorrt_bindings.*,tensorrt.*]\nignore_errors = True\n".format(
            os.path.join(REPO, ".ci", "typecheck_plugin.py")))
    os.environ.update(EDGEKIT_TYPECHECK_USES=uses, MYPYPATH=STUBS)
    out, err, _ = api.run(["--config-file", config, "--check-untyped-defs", "--follow-imports", "silent",
                           "--ignore-missing-imports", "--cache-dir", cache, "--no-sqlite-cache", "--no-error-summary"]
                          + [os.path.join(REPO, path) for path in CHECKED])
    errors = [line for line in (out + err).splitlines() if line.strip()]
    return errors, count_uses(uses)


def count_uses(path: str) -> Dict[str, int]:
    """Distinct uses by where they are: mypy may check one expression more than once."""
    seen = set()
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            seen = {tuple(json.loads(line)) for line in f if line.strip()}
    counts = {"tensorrt calls": 0, "tensorrt attributes": 0, "cuda.bindings.runtime calls": 0}
    ours = {os.path.join(REPO, p) for p in CHECKED} | set(CHECKED)
    for kind, name, where, _, _ in seen:
        if where not in ours:
            continue
        if name.startswith("cuda.bindings.runtime."):
            counts["cuda.bindings.runtime calls"] += kind == "call"
        else:
            counts["tensorrt calls" if kind == "call" else "tensorrt attributes"] += 1
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--install", action="store_true", help="only install the stubs")
    args = parser.parse_args()
    started = time.time()
    install()
    if args.install:
        return 0
    errors, counts = check()
    for line in errors:
        print(line)
    print("typecheck: {} module(s) that call TensorRT, against tensorrt-stubs 10.13 and cuda-python {}: {} TensorRT "
          "calls and {} attribute uses, {} CUDA runtime calls checked; {} error(s) in {:.1f} s".format(
              len(CHECKED), _cuda_version(), counts["tensorrt calls"], counts["tensorrt attributes"],
              counts["cuda.bindings.runtime calls"], len(errors), time.time() - started))
    return 1 if errors else 0


def _cuda_version() -> str:
    from importlib import metadata

    return "cuda-bindings " + metadata.version("cuda-bindings")


if __name__ == "__main__":
    sys.exit(main())
