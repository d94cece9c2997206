"""`edgekit latency-table`: measure (or reuse) a per-layer latency table and print its calibration.

Runs on the host (onnxruntime-cpu; torch-cuda where a GPU is) and on the device (tensorrt): the
layer graphs are built here with onnx.helper, so nothing but onnx and the runtime is needed.
"""

import argparse
import shutil
from typing import Any, Callable, Dict

from ...recipe import load_recipe


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", help="a latency backend `edgekit runners` lists: onnxruntime-cpu, tensorrt, a "
                   "plugin's (torch-cuda on a GPU host) (default: the recipe's prune.latency_backend)")
    p.add_argument("--image-size", type=int, help="input side (default: prune.latency_image_size)")
    p.add_argument("--batch", type=int, help="batch (default: prune.latency_batch)")
    p.add_argument("--precision", help="one the backend times (default: prune.latency_precision)")
    p.add_argument("--threads", type=int, help="runtime threads (default: the recipe's bench.threads or threads)")
    p.add_argument("--points", type=int, help="widths measured per axis (default: 8)")
    p.add_argument("--cache-dir", help="table cache folder (default: $EDGEKIT_CACHE/latency or "
                   "~/.cache/edgekit/latency)")
    p.add_argument("--out", help="also copy the table JSON here (deploy fetches it from the device; pass it "
                   "to the host run as prune.latency_table)")
    p.add_argument("--rebuild", action="store_true", help="measure again even when a cached table matches")


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> Dict[str, Any]:
    # Imported here: every `edgekit` command builds this parser, and these pull in numpy and onnx helpers.
    from .backends import get_backend
    from .table import DEFAULT_POINTS, load_or_build

    recipe = load_recipe(args.recipe, args.set)
    pcfg = recipe.prune
    backend = get_backend(args.backend or pcfg.latency_backend, precision=args.precision or pcfg.latency_precision,
                          threads=args.threads or recipe.bench.threads or recipe.threads)
    table, path = load_or_build(backend, args.image_size or pcfg.latency_image_size, args.batch or pcfg.latency_batch,
                                args.points or DEFAULT_POINTS, folder=args.cache_dir, log=log, rebuild=args.rebuild)
    if args.out:
        shutil.copyfile(path, args.out)
        log("latency table: copied to {}".format(args.out))
    summary = table.summary()
    log("latency table: {} (key {}), dense predicted {:.3f} ms, scale {:.3f}, prediction error mean {:.1%}, "
        "max {:.1%}".format(path, summary["key_hash"], summary["dense_predicted_ms"], summary["scale"],
                            summary["mean_abs_error"] or 0.0, summary["max_abs_error"] or 0.0))
    return summary
