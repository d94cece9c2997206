#!/usr/bin/env python3
"""MACs-targeted against latency-targeted pruning at the same measured latency, in one run.

1. the latency-targeted spiral (`prune.target: latency`, `--ratio` of the dense model's latency);
2. one-shot MACs pruning at a few MACs ratios, each timed beside the dense model, to find the MACs
   ratio whose *measured* latency equals the latency-targeted student's (linear interpolation);
3. the MACs-targeted spiral at that ratio;
4. dense, latency-targeted and MACs-targeted timed side by side (interleaved), with their top-1.

    .venv/bin/python benchmarks/latency_vs_macs.py --teacher artifacts/digits/teacher.pt [--ratio 0.5]
        [--backend onnxruntime-cpu] [--batch 1] [--out benchmarks/results/latency_vs_macs.json]
    # on a GPU host: --backend torch-cuda --precision fp16 --batch 64 --ratio 0.6

Without --teacher the digits teacher is trained first (about a minute).
"""

import argparse
import os
import sys
import tempfile

import numpy as np


def main(argv=None) -> int:  # noqa: ANN001
    from edgekit.artifacts import write_json_atomic
    from edgekit.device.runtime.registry import latency_backend
    from edgekit.host.arch.resnet import RESNET50
    from edgekit.host.compress.distill import train
    from edgekit.host.compress.latency import measure_ms
    from edgekit.host.compress.prune import prune
    from edgekit.host.compress.spiral import spiral
    from edgekit.host.data import evaluate_top1, load_data
    from edgekit.host.models import count_macs_params, load_student, resnet50
    from edgekit.recipe import load_recipe

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="digits")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--teacher", help="an edgekit teacher.pt (default: train the recipe's teacher)")
    p.add_argument("--ratio", type=float, default=0.5, help="latency target, of the dense model's")
    p.add_argument("--backend", default="onnxruntime-cpu")
    p.add_argument("--precision", default=None)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--work", default=None, help="folder for the spirals' rounds (default: a temp folder)")
    p.add_argument("--out", default=os.path.join("benchmarks", "results", "latency_vs_macs.json"))
    args = p.parse_args(argv)

    precision = args.precision or ("fp16" if args.backend == "torch-cuda" else "fp32")
    common = ["prune.latency_backend=" + args.backend, "prune.latency_batch={}".format(args.batch),
              "prune.latency_precision=" + precision]
    lat_recipe = load_recipe(args.recipe, args.set + common + ["prune.target=latency",
                                                                "prune.target_latency_ratio={}".format(args.ratio)])
    data = load_data(lat_recipe.data, lat_recipe.seed)
    size, batch = lat_recipe.prune.latency_image_size, args.batch
    work = args.work or tempfile.mkdtemp(prefix="edgekit-lvm-")
    if args.teacher:
        teacher, _ = load_student(args.teacher)
    else:
        teacher = resnet50(num_classes=data.num_classes, zero_init_residual=True)
        train(teacher, data, lat_recipe.teacher.epochs, lat_recipe.teacher.optimizer,
              checkpoint=os.path.join(work, "teacher.train.pt"), key="lvm-teacher", seed=lat_recipe.seed,
              desc="teacher", train_cfg=getattr(lat_recipe, "train", None))
    teacher.eval()
    backend = latency_backend(args.backend, precision=precision, threads=lat_recipe.bench.threads or lat_recipe.threads)

    print("== latency-targeted spiral ({:.0%} of the dense latency)".format(args.ratio), flush=True)
    lat_student, lat_rounds = spiral(teacher, data, lat_recipe, os.path.join(work, "latency"), teacher_key="lvm")
    dense_ms, lat_ms = measure_ms([teacher, lat_student], backend, size, batch)
    goal = lat_ms / dense_ms

    print("== MACs ratio with the same measured latency ({:.1%} of dense)".format(goal), flush=True)
    teacher_macs, _ = count_macs_params(teacher, data.image_size)
    probes = []
    for m in (0.3, 0.45, 0.6, 0.75):
        pruned = prune(teacher, int(m * teacher_macs), data.image_size, RESNET50, method=lat_recipe.prune.method,
                       log=lambda _msg: None).model
        d, t = measure_ms([teacher, pruned], backend, size, batch)
        probes.append((t / d, m))
        print("  MACs {:.0%} -> latency {:.1%} of dense".format(m, t / d), flush=True)
    probes.sort()
    macs_ratio = float(np.clip(np.interp(goal, [r for r, _ in probes], [m for _, m in probes]), 0.05, 1.0))

    print("== MACs-targeted spiral ({:.1%} of the MACs)".format(macs_ratio), flush=True)
    macs_recipe = load_recipe(args.recipe, args.set + common + ["prune.target=macs",
                                                                 "prune.target_macs_ratio={}".format(macs_ratio)])
    macs_student, macs_rounds = spiral(teacher, data, macs_recipe, os.path.join(work, "macs"), teacher_key="lvm")

    print("== dense, latency-targeted and MACs-targeted, timed side by side", flush=True)
    models = [("dense", teacher), ("latency-targeted", lat_student), ("macs-targeted", macs_student)]
    times = measure_ms([m for _, m in models], backend, size, batch, rounds=5)
    rows = []
    for (name, model), ms in zip(models, times):
        macs, params = count_macs_params(model, size)
        rows.append({"model": name, "top1": round(evaluate_top1(model, data.val_loader()), 3),
                     "latency_ms": round(ms, 4), "latency_ratio": round(ms / times[0], 4),
                     "macs_at_size": macs, "macs_ratio": round(macs / float(count_macs_params(teacher, size)[0]), 4),
                     "params": params})
    print("{:<18} {:>7} {:>11} {:>9} {:>9}".format("model", "top-1", "latency ms", "vs dense", "MACs"))
    for r in rows:
        print("{:<18} {:>6.2f}% {:>11.3f} {:>8.1%} {:>8.1%}".format(r["model"], r["top1"], r["latency_ms"],
                                                                   r["latency_ratio"], r["macs_ratio"]))
    result = {"backend": args.backend, "precision": precision, "image_size": size, "batch": batch,
              "target_latency_ratio": args.ratio, "macs_ratio_for_same_latency": round(macs_ratio, 4),
              "probes": [{"macs_ratio": m, "latency_ratio": round(r, 4)} for r, m in probes], "rows": rows,
              "latency_rounds": [{k: v for k, v in r.items() if k not in ("history", "width_spec")}
                                 for r in lat_rounds],
              "macs_rounds": [{k: v for k, v in r.items() if k not in ("history", "width_spec")}
                              for r in macs_rounds]}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    write_json_atomic(args.out, result)
    print("wrote {}".format(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
