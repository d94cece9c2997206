"""The main job, declared as stages: teacher → prune/distill spiral → evaluation → export → INT8
(quantize → per-layer fallback → QAT with distillation → the shipped files) → measurement → variants →
eval set → comparison, written under one artifacts folder.

Each stage says what it needs (upstream stages, the recipe sections it reads, extra inputs) and what it
writes; `edgekit.stages` derives every key the same way, reuses fresh stages, forces downstream and
records `manifest.json`. The computations are in `steps.py`; `summary.json` is built by `edgekit.summary`.
One run per folder: `run` holds `<out>/.edgekit.lock` (`edgekit.lock`).
"""

import os
import platform
import random
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from .. import __version__, summary
from ..artifacts import write_json_atomic
from ..device import layout
from ..device.bench.environment import cpu_model
from ..errors import EdgekitError
from ..lock import folder_lock
from ..recipe import Recipe, check_inputs
from ..stages import Stage, World, file_digest, run_stages
from . import stage_names, steps
from .arch import check_recipe
from .steps import HostContext


def _bench_threads(ctx: HostContext) -> Dict[str, int]:
    return {"threads": ctx.threads, "bench_threads": ctx.bench_threads}


def _quantizing(ctx: HostContext) -> bool:
    return ctx.recipe.quantize.enabled


def _qat_enabled(ctx: HostContext) -> bool:
    return ctx.recipe.quantize.enabled and ctx.recipe.qat.enabled


def _int8_outputs(stage: str) -> List[str]:
    return [layout.int8_stage_file(stage, kind) for kind in dict(steps.INT8_STAGES)[stage]]


def _comparing(ctx: HostContext) -> bool:
    return ctx.recipe.compare.enabled and _quantizing(ctx)


# Every stage that uses the data declares it whole and the seed that splits it.
DATA = ("data", "seed")
# Training keys leave out the device and the process count (a run resumes on another world size): the
# rest of `train` is read, not keyed.
TRAINING = ("train.precision", "train.lr_scaling")


def _compress_sections(config: Dict[str, Any]) -> Sequence[str]:
    """A latency target times models on the latency backend with the recipe's bench threads (else its
    threads), so those are inputs of the spiral; a MACs target times nothing."""
    timing = ("bench.threads", "threads") if config["prune"]["target"] == "latency" else ()
    return DATA + ("model", "prune", "distill") + TRAINING + timing  # the architecture prunes its own groups


STAGES = (
    Stage("teacher", steps.teacher, sections=DATA + ("model", "teacher") + TRAINING, reads=("name", "train"),
          outputs=(layout.TEACHER,), extra=lambda ctx: file_digest(ctx.recipe.model.checkpoint), collective=True),
    Stage("compress", steps.compress, needs=("teacher",), sections=_compress_sections, reads=("name", "train"),
          outputs=(layout.STUDENT,), on_force=steps.drop_rounds, collective=True),
    Stage("evaluate", steps.evaluate, needs=("teacher", "compress"), sections=DATA),
    Stage("export", steps.export, needs=("compress",), sections=DATA, reads=("threads",),
          outputs=(layout.FP32, layout.FP16)),
    # INT8: each stage writes its own int8/<stage>.* files; `int8` ships the last one's under the names
    # the device reads (steps.INT8_STAGES).
    Stage("quantize", steps.quantize, needs=("export",), sections=DATA + ("quantize",), reads=("threads",),
          outputs=tuple(_int8_outputs("quantize")) + (layout.CALIB_RANGES,), enabled=_quantizing),
    Stage("fallback", steps.fallback, needs=("export", "quantize"),
          sections=DATA + ("fallback", "quantize.per_channel", "quantize.cpu_reduce_range", "bench"),
          reads=("threads", "quantize.enabled"), outputs=tuple(_int8_outputs("fallback")), extra=_bench_threads,
          enabled=_quantizing),
    Stage("qat", steps.qat, needs=("teacher", "compress", "export", "quantize", "fallback"),
          sections=DATA + ("qat", "distill.alpha", "distill.temperature", "quantize.per_channel",
                           "quantize.cpu_reduce_range", "quantize.trt_version") + TRAINING,
          reads=("name", "train", "threads", "quantize.enabled"), outputs=tuple(_int8_outputs("qat")),
          enabled=_qat_enabled, collective=True),
    Stage("int8", steps.int8, needs=("quantize", "fallback", "qat"), reads=("quantize.enabled",),
          outputs=tuple(layout.SHIPPED_INT8.values()), enabled=_quantizing),
    Stage("measure", steps.measure, needs=("compress", "export", "int8"), sections=DATA + ("bench",),
          reads=("threads",), extra=_bench_threads),
    Stage("variants", steps.variants, needs=("teacher", "compress", "evaluate"), sections=DATA,
          outputs=lambda metrics: [v["path"] for v in metrics.get("variants", [])]),
    Stage("evalset", steps.evalset, needs=("measure", "variants"), sections=DATA, reads=("threads",),
          outputs=(layout.EVAL_SET,), extra=lambda ctx: (steps.EVAL_SET_BYTES, summary.PREPROCESSING_SCHEMA)),
    Stage("compare", steps.compare, needs=("teacher", "compress"), sections=DATA + ("compare", "quantize", "bench"),
          reads=("threads",), extra=_bench_threads, enabled=_comparing),
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


def check_choices(recipe: Recipe) -> None:
    """The recipe's names of registered things, read from their registries (the recipe is torch-free and
    cannot hold these lists): the architecture and an input it can take, Model Optimizer for QAT, the
    pruning importance, and for
    a latency target the latency backend (a plugin that cannot load here says what to install) and a
    precision it times."""
    from ..device.runtime.registry import timer
    from .compress.prune import IMPORTANCES

    check_recipe(recipe)
    if recipe.qat.enabled:
        from .compress.quantize.qat import check_modelopt

        check_modelopt()  # the stage imports Model Optimizer: a missing one is said before the first stage
    methods = list(IMPORTANCES) + ["unstructured"]
    if recipe.prune.method not in methods:
        raise EdgekitError("recipe: prune.method must be one of {}, got {!r}".format(
            ", ".join(methods), recipe.prune.method))
    if recipe.prune.target != "latency":
        return
    found = timer(recipe.prune.latency_backend)
    if recipe.prune.latency_precision not in found.precisions:
        raise EdgekitError("recipe: prune.latency_precision is {} but latency backend {} times {} only".format(
            recipe.prune.latency_precision, found.backend, " or ".join(found.precisions)))


def run(recipe: Recipe, out_dir: str, force: bool = False, force_stages: Sequence[str] = (),
        log: Callable[[str], None] = print, world: Optional[World] = None) -> Dict[str, Any]:
    """Run the host stages of `recipe` into `out_dir`; return the summary (also in summary.json).

    `force` recomputes every stage; `force_stages` the named ones and everything downstream of them.
    `world` is the torchrun hook (`edgekit.host.dist.Dist` fits); by default one process.
    """
    check_choices(recipe)  # a name no registry knows, an input the architecture cannot take: before any work
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
    latency = ", latency {:.1%} of dense (target {:g}%, {})".format(
        s["latency_ratio"], round(100 * s["target_latency_ratio"], 1), s["latency_backend"]) \
        if "latency_ratio" in s else ""
    log("student: top-1 {:.2f}% ({:+.2f}), {:.1f} M MACs ({:.1%}){}, {:.2f} M params ({:.1%}), "
        "agrees with the teacher on {:.1f}%".format(
            s["top1"], s["top1_delta"], s["macs"] / 1e6, s["macs_ratio"], latency, s["params"] / 1e6,
            s["params_ratio"], s["agreement_with_teacher"]))
    log("wrote {}".format(summary_path))
