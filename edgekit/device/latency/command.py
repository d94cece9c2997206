"""`edgekit latency-table`: measure (or reuse) a per-layer latency table and print its calibration.

Runs on the host (onnxruntime-cpu; torch-cuda where a GPU is) and on the device (tensorrt): the
layer graphs are built here with onnx.helper, so nothing but onnx and the runtime is needed. The
layers come from `--layers` (a table or layers file written on the host: the device has no
PyTorch), else ResNet-50's built-in description, else the host derives them from the recipe's
model.arch (the `describe` callable the CLI passes).
"""

import argparse
import json
import shutil
from typing import Any, Callable, Dict, Optional

from ...artifacts import write_json_atomic
from ...errors import EdgekitError
from .net import Net


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
    p.add_argument("--layers", help="the layers to time: a table or layers JSON written on the host (default: "
                   "derived from the recipe's model.arch, which needs PyTorch unless it is resnet50)")
    p.add_argument("--num-classes", type=int, help="classes of the model whose layers are derived (default: "
                   "model.num_classes, else 10 as in the digits data)")
    p.add_argument("--save-layers", help="also write the layer description here (for --layers on a device)")


def layers_for(recipe: Any, args: argparse.Namespace, image_size: int,
               describe: Optional[Callable[[Any, int, int], Net]]) -> Net:
    """The description to time: --layers, else ResNet-50's built-in one, else the host's derivation."""
    if args.layers:
        try:
            with open(args.layers, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            raise EdgekitError("cannot read --layers {}: {}".format(args.layers, exc)) from None
        if isinstance(data, dict) and "kinds" in data and "key" in data:  # a table: its description
            from .table import LatencyTable

            return LatencyTable(data).net
        net = Net.from_dict(data)
        if net.image_size != image_size:
            raise EdgekitError("--layers {} describes {}x{} inputs; give --image-size {}".format(
                args.layers, net.image_size, net.image_size, net.image_size))
        return net
    if recipe.model.arch == "resnet50":
        from .layers import resnet50_net

        return resnet50_net(image_size)
    if describe is None:
        raise EdgekitError("the layers of {} come from the host: pass --layers with a table or layers file "
                           "written there".format(recipe.model.arch))
    return describe(recipe, image_size, args.num_classes or recipe.model.num_classes or 10)


def run(args: argparse.Namespace, recipe: Any, log: Callable[[str], None] = print,
        describe: Optional[Callable[[Any, int, int], Net]] = None) -> Dict[str, Any]:
    """`recipe` (an edgekit.recipe.Recipe, loaded by the CLI from --recipe and --set) gives the defaults of
    what the flags leave out."""
    # Imported here: every `edgekit` command builds this parser, and these pull in numpy and onnx helpers.
    from ..runtime.registry import latency_backend
    from .table import DEFAULT_POINTS, load_or_build

    pcfg = recipe.prune
    backend = latency_backend(args.backend or pcfg.latency_backend, precision=args.precision or pcfg.latency_precision,
                              threads=args.threads or recipe.bench.threads or recipe.threads)
    size = args.image_size or pcfg.latency_image_size
    net = layers_for(recipe, args, size, describe)
    if args.save_layers:
        write_json_atomic(args.save_layers, net.to_dict())
        log("latency table: layer description of {} ({} kinds, {} layers) written to {}".format(
            net.arch, len(net.kinds), len(net.layers), args.save_layers))
    table, path = load_or_build(backend, size, args.batch or pcfg.latency_batch, args.points or DEFAULT_POINTS,
                                folder=args.cache_dir, log=log, rebuild=args.rebuild, net=net)
    if args.out:
        shutil.copyfile(path, args.out)
        log("latency table: copied to {}".format(args.out))
    summary = table.summary()
    log("latency table: {} (key {}), {} kinds of {}, dense predicted {:.3f} ms, scale {:.3f} x layer sum + {:.3f} "
        "ms per M weights, prediction error mean {:.1%}, max {:.1%}".format(
            path, summary["key_hash"], summary["kinds"], table.net.arch, summary["dense_predicted_ms"],
            summary["scale"], summary["weight_ms_per_mparam"], summary["mean_abs_error"] or 0.0,
            summary["max_abs_error"] or 0.0))
    return summary
