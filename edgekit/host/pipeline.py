"""The main job, declared as stages: teacher → prune/distill spiral → evaluation → export → INT8 →
measurement → variants → eval set → comparison, written under one artifacts folder.

Each stage says what it needs (upstream stages, the recipe sections it reads, extra inputs) and what it
writes; `edgekit.stages` derives every key the same way, reuses fresh stages, forces downstream and
records `manifest.json`. The computations are in `steps.py`; `summary.json` is built by `edgekit.summary`.
One run per folder: `run` holds `<out>/.edgekit.lock` (`edgekit.lock`).
"""

import os
import platform
import random
import sys
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np
import torch

from .. import __version__, summary
from ..artifacts import write_json_atomic
from ..device import layout
from ..device.bench.environment import cpu_model
from ..lock import folder_lock
from ..recipe import Recipe, check_inputs
from ..stages import Stage, World, file_digest, run_stages
from . import stage_names, steps
from .models import architecture
from .steps import HostContext


def _bench_threads(ctx: HostContext) -> Dict[str, int]:
    return {"threads": ctx.threads, "bench_threads": ctx.bench_threads}


def _quantizing(ctx: HostContext) -> bool:
    return ctx.recipe.quantize.enabled


STAGES = (
    # Training keys leave out the device and the process count: a run resumes on another world size.
    Stage("teacher", steps.teacher,
          sections=("data", "model", "teacher", "train.precision", "train.lr_scaling", "seed"),
          outputs=(layout.TEACHER,), extra=lambda ctx: file_digest(ctx.recipe.model.checkpoint), collective=True),
    Stage("compress", steps.compress, needs=("teacher",),
          sections=("prune", "distill", "train.precision", "train.lr_scaling", "seed"),
          outputs=(layout.STUDENT,), on_force=steps.drop_rounds, collective=True),
    Stage("evaluate", steps.evaluate, needs=("teacher", "compress")),
    Stage("export", steps.export, needs=("compress",), sections=("data.image_size",),
          outputs=(layout.FP32, layout.FP16)),
    Stage("quantize", steps.quantize, needs=("export",), sections=("quantize", "data.calibration_samples", "seed"),
          outputs=(layout.INT8_QDQ, layout.INT8_CPU, layout.CALIB_CACHE), enabled=_quantizing),
    Stage("measure", steps.measure, needs=("compress", "export", "quantize"), sections=("bench",),
          extra=_bench_threads),
    Stage("variants", steps.variants, needs=("teacher", "compress", "evaluate"), sections=("data.image_size",),
          outputs=lambda metrics: [v["path"] for v in metrics.get("variants", [])]),
    Stage("evalset", steps.evalset, needs=("measure", "variants"), sections=("data",), outputs=(layout.EVAL_SET,),
          extra=lambda ctx: steps.EVAL_SET_BYTES),
    Stage("compare", steps.compare, needs=("teacher", "compress"), sections=("compare", "quantize", "bench", "seed"),
          extra=_bench_threads, enabled=lambda ctx: ctx.recipe.compare.enabled and _quantizing(ctx)),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
assert STAGE_NAMES == stage_names.STAGE_NAMES, "edgekit/host/stage_names.py lists other stages than STAGES"


def environment(threads: int) -> Dict[str, Any]:
    import torchvision

    try:
        import torch_pruning
        tp_version = getattr(torch_pruning, "__version__", "unknown")
    except ImportError:
        tp_version = None
    return {"python": platform.python_version(), "platform": platform.platform(),
            "machine": platform.machine(), "processor": cpu_model(), "cpu_count": os.cpu_count(),
            "threads": threads, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "torch_pruning": tp_version, "edgekit": __version__}


def run(recipe: Recipe, out_dir: str, force: bool = False, force_stages: Sequence[str] = (),
        log: Callable[[str], None] = print, world: Optional[World] = None) -> Dict[str, Any]:
    """Run the host stages of `recipe` into `out_dir`; return the summary (also in summary.json).

    `force` recomputes every stage; `force_stages` the named ones and everything downstream of them.
    `world` is the torchrun hook (`edgekit.host.dist.Dist` fits); by default one process.
    """
    architecture(recipe.model.arch)  # an unknown architecture fails before any work
    check_inputs(recipe)  # so does a missing checkpoint, before minutes of data scanning
    world = world or World()
    with folder_lock(out_dir):
        ctx = HostContext(recipe, recipe.to_dict(), out_dir, log, world)
        torch.set_num_threads(ctx.threads)
        random.seed(recipe.seed)
        np.random.seed(recipe.seed)
        torch.manual_seed(recipe.seed)
        results = run_stages(STAGES, ctx, force, force_stages)
        if "compare" in results:
            from .compare import format_table

            log(format_table(results["compare"].metrics))
        found = summary.build({name: r.metrics for name, r in results.items()},
                              [{"name": r.name, "seconds": r.seconds, "reused": r.reused} for r in results.values()],
                              ctx.config, input_shape=[1, 3, recipe.data.image_size, recipe.data.image_size],
                              num_classes=results["teacher"].metrics.get("num_classes") or ctx.num_classes,
                              environment=environment(ctx.threads), command=sys.argv)
        summary_path = os.path.join(out_dir, layout.SUMMARY)
        if world.is_writer:
            write_json_atomic(summary_path, found)
    _log_result(found, summary_path, log)
    return found


def _log_result(found: Dict[str, Any], summary_path: str, log: Callable[[str], None]) -> None:
    t, s = found["teacher"], found["student"]
    log("teacher: top-1 {:.2f}%, {:.1f} M MACs, {:.2f} M params".format(t["top1"], t["macs"] / 1e6, t["params"] / 1e6))
    log("student: top-1 {:.2f}% ({:+.2f}), {:.1f} M MACs ({:.1%}), {:.2f} M params ({:.1%}), "
        "agrees with the teacher on {:.1f}%".format(
            s["top1"], s["top1_delta"], s["macs"] / 1e6, s["macs_ratio"], s["params"] / 1e6, s["params_ratio"],
            s["agreement_with_teacher"]))
    log("wrote {}".format(summary_path))
