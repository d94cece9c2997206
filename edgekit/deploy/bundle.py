"""The device bundle: the folder that goes to the device.

An edgekit wheel (when the device has no edgekit of its own), the exported models, the calibration
cache re-tagged for the target's TensorRT, summary.json, eval.npz, the target file and jobs.json.
Files are hard links into the artifacts folder where possible, so a bundle costs no disk.
"""

import glob
import hashlib
import json
import os
import shutil
import sys
from typing import Callable, List, Optional, Sequence

from ..artifacts import sha256_file, write_json_atomic
from ..device import layout
from ..device.engine.calibcache import retag_calibration_cache
from ..errors import EdgekitError
from ..targets import Target
from .transport import checked, link_or_copy, run_argv

# summary.json is rewritten (timestamps) by every host run; its figures change only with the models,
# and jobs.json carries the fingerprint itself.
NOT_FINGERPRINTED = (layout.SUMMARY, layout.JOBS_FILE)


def bundle_variants(artifacts: str) -> List[str]:
    """The variants (teacher, intermediate rounds) the host stages exported, from summary.json."""
    try:
        with open(os.path.join(artifacts, layout.SUMMARY), encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return []
    return [v["name"] for v in summary.get("variants", [])
            if os.path.exists(os.path.join(artifacts, v.get("path", "")))]


def build_wheel(bundle: str) -> str:
    """edgekit as a wheel in `bundle`; byte-identical for identical sources, so a re-run copies nothing."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for old in glob.glob(os.path.join(bundle, "edgekit-*.whl")):
        os.unlink(old)
    step = "building the edgekit wheel"
    checked(run_argv([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w",
                      bundle, repo], step, 600, env=dict(os.environ, SOURCE_DATE_EPOCH="315532800")), step)
    wheels = glob.glob(os.path.join(bundle, "edgekit-*.whl"))
    if len(wheels) != 1:
        raise EdgekitError("{}: expected one edgekit wheel in {}, found {}".format(step, bundle, len(wheels)))
    return os.path.basename(wheels[0])


def bundle_calibration_cache(source: str, destination: str, target: Target) -> Optional[str]:
    """The cache with the header the target's TensorRT reads (it skips any other silently); a target
    without a TensorRT version gets it unchanged. Returns the header written, if re-tagged."""
    if not target.tensorrt:
        link_or_copy(source, destination)
        return None
    return retag_calibration_cache(source, destination, target.tensorrt)


def build_bundle(artifacts: str, target: Target, target_file: str, bundle: str, variants: Sequence[str] = (),
                 wheel: bool = True, log: Callable[[str], None] = print) -> List[str]:
    """Fill `bundle`; returns its files as paths relative to it (jobs.json is added by the flow)."""
    os.makedirs(bundle, exist_ok=True)
    files = [build_wheel(bundle)] if wheel else []
    names = [m.path for m in layout.MODELS] + [layout.CALIB_CACHE, layout.LAYER_PRECISIONS, layout.INT8_FP32,
                                               layout.SUMMARY, layout.EVAL_SET]
    names += [layout.variant_onnx(v) for v in variants]
    for name in names:
        source = os.path.join(artifacts, name)
        if not os.path.exists(source):
            raise EdgekitError("{} is missing: run the host stages first (edgekit run)".format(source))
        if name == layout.CALIB_CACHE:
            bundle_calibration_cache(source, os.path.join(bundle, name), target)
        else:
            link_or_copy(source, os.path.join(bundle, name))
        files.append(name)
    shutil.copy2(target_file, os.path.join(bundle, layout.TARGET_FILE))
    files.append(layout.TARGET_FILE)
    log("[bundle] {} files in {}".format(len(files) + 1, bundle))
    return files


def bundle_fingerprint(bundle: str, files: Sequence[str], *conditions: object) -> str:
    """One hash over every bundle file's name and content and the run's `conditions` (measuring
    seconds, power mode): results kept on the device for a resume are only trusted while this is
    unchanged."""
    digest = hashlib.sha256(repr(conditions).encode("utf-8"))
    for name in sorted(f for f in files if f not in NOT_FINGERPRINTED):
        digest.update("{}\0{}\n".format(name, sha256_file(os.path.join(bundle, name))).encode("utf-8"))
    return digest.hexdigest()[:16]


def write_jobs_file(bundle: str, document: dict) -> str:
    write_json_atomic(os.path.join(bundle, layout.JOBS_FILE), document)
    return layout.JOBS_FILE
