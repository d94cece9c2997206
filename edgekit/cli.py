"""The `edgekit` command: parse flags, call one library function, print, exit.

User errors (EdgekitError) print one line on stderr and exit with status 2, no traceback.
Heavy modules are imported inside the subcommand that needs them, so `edgekit --help` is instant
and device-side subcommands never pull in torch.
"""

import argparse
import json
import os
import sys
from typing import Callable, List, Optional

from . import __version__
from .errors import EdgekitError


def _log(message: str) -> None:
    print(message, flush=True)


def _cmd_run(args: argparse.Namespace) -> int:
    from .host.pipeline import default_out_dir, run
    from .recipe import load_recipe

    overrides = list(args.set or [])
    if args.threads is not None:
        overrides.append("threads={}".format(args.threads))
    recipe = load_recipe(args.recipe, overrides)
    out = default_out_dir(recipe, args.out)
    _log("edgekit {}: recipe {} -> {}".format(__version__, recipe.name, out))
    run(recipe, out, force=args.force, force_stages=args.force_stage or (), log=_log)
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .host.models import count_macs_params, load_resnet50_checkpoint, widths_summary

    model, info = load_resnet50_checkpoint(args.path, log=_log)
    macs, params = count_macs_params(model, args.image_size)
    report = {"path": args.path, "num_classes": info["num_classes"], "image_size": args.image_size,
              "macs": macs, "params": params, "stage_widths": widths_summary(info["width_spec"])}
    if args.width_spec:
        report["width_spec"] = info["width_spec"]
    print(json.dumps(report, indent=2))
    return 0


def _cmd_build_engine(args: argparse.Namespace) -> int:
    from .device.engine.builder import BuildConfig, build_engine, plan_build, trtexec_command

    cfg = BuildConfig(args.onnx, engine_path=args.out, precision=args.precision, dla_core=args.dla,
                      gpu_fallback=not args.no_gpu_fallback, workspace_mb=args.workspace_mb,
                      optimization_level=args.optimization_level, min_batch=args.min_batch,
                      opt_batch=args.opt_batch, max_batch=args.max_batch, static_batch=args.batch,
                      timing_cache=args.timing_cache, calibration_cache=args.calib)
    if args.print_trtexec:
        print(trtexec_command(cfg, args.input_shape and [int(d) for d in args.input_shape.split("x")]))
        return 0
    plan_build(cfg)
    build_engine(cfg, log=_log, force=args.force)
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    from .host.pipeline import default_out_dir, run
    from .recipe import load_recipe
    from .remote import deploy, reach
    from .targets import load_target, resolve_target_path

    target = load_target(args.target)
    target_file = resolve_target_path(args.target)
    recipe = load_recipe(args.recipe, args.set)
    out = default_out_dir(recipe, args.out)
    # The device first: an unreachable host or a missing runtime should cost seconds, not the host stages.
    reached = reach(target, args.device, args.ssh_port, args.ssh_key, args.known_hosts, log=_log)
    _log("[host] stages of recipe {} -> {}".format(recipe.name, out))
    run(recipe, out, log=_log)
    deploy(out, target, target_file, args.device, ssh_port=args.ssh_port, ssh_key=args.ssh_key,
           python=args.remote_python, results_root=args.results, known_hosts=args.known_hosts,
           seconds=args.seconds, log=_log, reached=reached)
    return 0


def _cmd_lint(args: argparse.Namespace) -> int:
    from .trtlint import lint

    found = lint(args.model)
    for violation in found:
        print("{}: {}".format(args.model, violation))
    if found:
        raise EdgekitError("{} has {} TensorRT 8.5 violation(s); the first: {}".format(
            args.model, len(found), found[0]))
    print("{}: TensorRT 8.5 compatible (opset, ops, weights, Q/DQ placement)".format(args.model))
    return 0


def _cmd_show_recipe(args: argparse.Namespace) -> int:
    import yaml

    from .recipe import load_recipe

    recipe = load_recipe(args.recipe, args.set)
    print(yaml.safe_dump(recipe.to_dict(), sort_keys=False), end="")
    return 0


def _accuracy_from_summary(summary_path: str, model_path: str, accuracy_from: Optional[str] = None) -> dict:
    """The top-1 that `edgekit run` measured for this exported model, so speed never goes without it.

    An engine takes the top-1 of `accuracy_from` (the exported model nearest to it), else of the ONNX
    file it was built from (its metadata says which); the result records which model that was.
    """
    try:
        with open(summary_path, encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, ValueError) as exc:
        raise EdgekitError("cannot read summary {}: {}".format(summary_path, exc)) from None
    name = os.path.basename(accuracy_from or model_path)
    if not accuracy_from and model_path.endswith((".engine", ".plan")):
        from .device.engine.metadata import load_metadata

        name = os.path.basename(load_metadata(model_path).get("onnx_path") or model_path)
    known = list(summary.get("models", [])) + list(summary.get("variants", []))
    for entry in known:
        if os.path.basename(entry.get("path", "")) == name:
            found = {"top1": entry["top1"], "dataset": summary.get("recipe"), "summary": summary_path,
                     "split": "val", "measured_on": entry.get("path"),
                     "runtime": entry.get("runtime", "pytorch" if entry in summary.get("variants", []) else None)}
            for key in ("macs", "params", "macs_ratio"):
                if key in entry:
                    found[key] = entry[key]
            eval_set = summary.get("eval_set") or {}
            if entry.get("path") in eval_set.get("top1", {}):  # the host's top-1 on eval.npz's images
                found["eval_top1"], found["eval_of"] = eval_set["top1"][entry["path"]], eval_set.get("of")
            if "macs" not in found and entry in summary.get("models", []) and "student" in summary:
                found.update({k: summary["student"][k] for k in ("macs", "params", "macs_ratio")
                              if k in summary["student"]})
            return found
    raise EdgekitError("{} lists no accuracy for {} (models: {})".format(
        summary_path, name, ", ".join(os.path.basename(m.get("path", "?")) for m in known) or "none"))


def _cmd_bench(args: argparse.Namespace) -> int:
    from .device.bench.harness import benchmark
    from .device.bench.results import save_csv

    try:
        batches = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        raise EdgekitError("--batches expects comma-separated integers, e.g. 1,2,4,8") from None
    out = args.out or os.path.join("benchmarks", "results", "local",
                                   os.path.basename(args.model).rsplit(".", 1)[0] + ".json")
    scenarios = args.scenario or ("single_stream", "offline")
    accuracy = _accuracy_from_summary(args.summary, args.model, args.accuracy_from) if args.summary else None
    result = benchmark(args.model, out, runner=args.runner, threads=args.threads, scenarios=scenarios,
                       batches=batches, warmup=args.warmup, min_queries=args.queries, min_seconds=args.seconds,
                       power=not args.no_power, idle_seconds=args.idle_seconds, accuracy=accuracy,
                       cuda_graph=args.cuda_graph, precision=args.precision,
                       labels={"variant": args.variant, "target": args.target, "placement": args.placement,
                               "recipe": accuracy["dataset"] if accuracy else None},
                       eval_set=args.eval, log=_log)
    accuracy = result["accuracy"]
    if args.csv:
        save_csv(args.csv, [result])
    ss = result["scenarios"].get("single_stream")
    if ss:
        lat = ss["latency"]
        if not accuracy:
            top1 = " (accuracy not given: pass --summary and --eval)"
        elif "host_top1" in accuracy or "dataset" not in accuracy:
            top1 = " (top-1 {:.2f}% scored by this run on {} images)".format(
                accuracy["top1"], accuracy["device_check"]["images"])
        else:
            top1 = " (top-1 {:.2f}% on {} val)".format(accuracy["top1"], accuracy["dataset"])
        _log("single-stream: p50 {p50_ms:.3f} ms, p90 {p90_ms:.3f} ms, p99 {p99_ms:.3f} ms, max {max_ms:.3f} ms "
             "over {count} queries".format(**lat) + top1)
    off = result["scenarios"].get("offline")
    if off:
        for row in off["rows"]:
            _log("offline batch {:>3}: {:>9.1f} img/s (p50 {:.3f} ms per batch)".format(
                row["batch"], row["throughput"], row["latency"]["p50_ms"]))
        _log("best batch {} at {:.1f} img/s".format(off["best_batch"], off["best_throughput"]))
    return 0


def _cmd_results(args: argparse.Namespace) -> int:
    from .report.store import build_index, format_table, query_runs, regressions

    index = build_index(args.results)
    for problem in index["problems"]:
        print("edgekit: skipped {}: {}".format(problem["file"], problem["reason"]), file=sys.stderr)
    runs = query_runs(index["path"], target=args.target, variant=args.variant, precision=args.precision,
                      recipe=args.recipe, since=args.since, until=args.until)
    flagged = [f for f in regressions(query_runs(index["path"]), args.threshold)
               if f["run_id"] in {r["run_id"] for r in runs}]
    if args.csv:
        import csv

        writer = csv.writer(sys.stdout, lineterminator="\n")
        columns = [c for c in runs[0].keys() if c != "environment"] if runs else []
        writer.writerow(columns + ["regressed"])
        marks = {}
        for f in flagged:
            marks.setdefault(f["run_id"], []).append(f["metric"])
        for run in runs:
            writer.writerow([run[c] for c in columns] + [" ".join(marks.get(run["run_id"], []))])
        return 0
    if not runs:
        print("no runs match ({} indexed in {})".format(len(index["runs"]), index["path"]))
        return 0
    print(format_table(runs, flagged))
    print("{} of {} runs; index {}".format(len(runs), len(index["runs"]), index["path"]))
    return 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from .report.dashboard import describe, write_dashboard

    summary = write_dashboard(args.results, args.out, threshold=args.threshold)
    for line in describe(summary):
        _log(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgekit", description="Prune, distill, quantize and benchmark "
                                     "ResNet-50 classifiers for Jetson/TensorRT.")
    parser.add_argument("--version", action="version", version="edgekit " + __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    recipe_args = argparse.ArgumentParser(add_help=False)
    recipe_args.add_argument("--recipe", default="digits",
                             help="preset name under benchmarks/recipes/ or a YAML path (default: digits)")
    recipe_args.add_argument("--set", action="append", metavar="KEY=VALUE",
                             help="override a recipe field, e.g. --set distill.alpha=0.5 (repeatable)")

    p = sub.add_parser("run", parents=[recipe_args], help="run the host stages: teacher, prune/distill spiral, "
                       "evaluation")
    p.add_argument("--out", help="artifacts folder (default: artifacts/<recipe name>)")
    p.add_argument("--force", action="store_true", help="recompute every stage instead of reusing finished ones")
    p.add_argument("--force-stage", action="append", metavar="STAGE",
                   help="recompute one stage (teacher, compress, evaluate, export, compare); repeatable")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("inspect", help="MACs, parameters and widths of a ResNet-50 checkpoint or edgekit model")
    p.add_argument("path")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--width-spec", action="store_true", help="print the full width spec")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("bench", help="measure latency, throughput and power of an ONNX model (device side)")
    p.add_argument("model", help="an ONNX file")
    p.add_argument("--out", help="result JSON (default: benchmarks/results/local/<model>.json)")
    p.add_argument("--csv", help="also write the rows as CSV here")
    p.add_argument("--summary", help="summary.json of the run that exported the model: records its top-1")
    p.add_argument("--runner", default="auto", help="auto (TensorRT when there, else onnxruntime) or onnxruntime")
    p.add_argument("--threads", type=int, help="runtime CPU threads (default: the runtime's choice)")
    p.add_argument("--scenario", action="append", choices=["single_stream", "offline"],
                   help="repeatable; default both")
    p.add_argument("--batches", default="1,2,4,8", help="offline batch sweep (default 1,2,4,8)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--queries", type=int, default=100, help="minimum measured queries (single-stream)")
    p.add_argument("--seconds", type=float, default=3.0, help="minimum measured seconds per scenario/batch")
    p.add_argument("--idle-seconds", type=float, default=2.0, help="idle power baseline before measuring")
    p.add_argument("--no-power", action="store_true", help="do not sample power")
    p.add_argument("--cuda-graph", action="store_true", help="TensorRT: replay a captured CUDA graph per shape")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], help="recorded with the result (default: "
                   "from the file name)")
    p.add_argument("--accuracy-from", metavar="MODEL", help="with --summary: take the top-1 of this exported model "
                   "(e.g. model.int8.qdq.onnx for an INT8 engine; default: the model itself, or the ONNX an engine "
                   "was built from)")
    p.add_argument("--eval", metavar="EVAL_NPZ", help="the host's eval.npz: this runner scores its images too, "
                   "and the result records that top-1 beside the host's")
    p.add_argument("--variant", help="what this model is (teacher, round1, student...; recorded, default: student "
                   "for model.*.onnx, else the file's stem)")
    p.add_argument("--target", help="the deploy target this runs on (recorded; default: local)")
    p.add_argument("--placement", choices=["cpu", "gpu", "dla0", "dla1"], help="where it runs (recorded; default: "
                   "from the runner)")
    p.set_defaults(func=_cmd_bench, scenario=None)

    p = sub.add_parser("build-engine", help="build a TensorRT engine from an exported ONNX model (on the device)")
    p.add_argument("onnx", help="model.int8.qdq.onnx (INT8 on the GPU), model.fp16.onnx / model.fp32.onnx")
    p.add_argument("--out", help="engine path (default: <model>.<precision>.<gpu|dlaN>.engine beside the ONNX)")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp16")
    p.add_argument("--dla", type=int, choices=[0, 1], help="build for DLA core 0 or 1 (GPU fallback on)")
    p.add_argument("--no-gpu-fallback", action="store_true", help="fail instead of running DLA-unsupported layers "
                   "on the GPU")
    p.add_argument("--calib", help="calib.cache for implicit INT8 (DLA)")
    p.add_argument("--workspace-mb", type=int, default=1024, help="builder workspace limit (default 1024 MiB)")
    p.add_argument("--optimization-level", type=int, choices=range(0, 6), help="TensorRT 8.6+ builder level")
    p.add_argument("--batch", type=int, help="a static batch instead of a min/opt/max profile")
    p.add_argument("--min-batch", type=int, default=1)
    p.add_argument("--opt-batch", type=int, default=1)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--timing-cache", help="persistent timing cache file (kept between builds)")
    p.add_argument("--input-shape", help="CxHxW for --print-trtexec (default: 3x224x224)")
    p.add_argument("--print-trtexec", action="store_true", help="print the equivalent trtexec line and exit")
    p.add_argument("--force", action="store_true", help="rebuild even when an engine from this ONNX is up to date")
    p.set_defaults(func=_cmd_build_engine)

    p = sub.add_parser("deploy", parents=[recipe_args], help="host stages, then measure every variant on a device "
                       "over SSH (or here) and fetch the results")
    p.add_argument("--target", default="cpu", help="a name under deploy/targets/ or a YAML path")
    p.add_argument("--device", help="user@host (or a host from ~/.ssh/config); none: measure here (target cpu)")
    p.add_argument("--seconds", type=float, default=1.0, help="minimum measured seconds per scenario and batch")
    p.add_argument("--ssh-port", type=int)
    p.add_argument("--ssh-key", help="private key file")
    p.add_argument("--known-hosts", help="known_hosts file to use instead of ~/.ssh/known_hosts")
    p.add_argument("--remote-python", default="python3", help="the device's Python (default python3)")
    p.add_argument("--out", help="artifacts folder (default: artifacts/<recipe name>)")
    p.add_argument("--results", default=os.path.join("benchmarks", "results"), help="where results are fetched to")
    p.set_defaults(func=_cmd_deploy)

    results_dir = os.path.join("benchmarks", "results")
    p = sub.add_parser("results", help="index every result JSON (SQLite) and list runs as a table or CSV")
    p.add_argument("--results", default=results_dir, help="results folder (default: benchmarks/results)")
    p.add_argument("--target", help="only this target (cpu, xavier, ...)")
    p.add_argument("--accuracy-from", metavar="MODEL", help="with --summary: take the top-1 of this exported model "
                   "(e.g. model.int8.qdq.onnx for an INT8 engine; default: the model itself, or the ONNX an engine "
                   "was built from)")
    p.add_argument("--variant", help="only this variant (teacher, round1, student, ...)")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"])
    p.add_argument("--recipe", help="only this recipe")
    p.add_argument("--since", metavar="YYYY-MM-DD", help="runs from this date on")
    p.add_argument("--until", metavar="YYYY-MM-DD", help="runs up to this date")
    p.add_argument("--threshold", type=float, default=0.10, help="regression threshold as a fraction (default 0.10)")
    p.add_argument("--csv", action="store_true", help="CSV on stdout instead of a table")
    p.set_defaults(func=_cmd_results)

    p = sub.add_parser("dashboard", help="write the offline benchmark dashboard (one self-contained HTML file)")
    p.add_argument("--results", default=results_dir, help="results folder (default: benchmarks/results)")
    p.add_argument("--out", default=os.path.join("benchmarks", "dashboard", "index.html"))
    p.add_argument("--threshold", type=float, default=0.10, help="regression threshold as a fraction (default 0.10)")
    p.set_defaults(func=_cmd_dashboard)

    p = sub.add_parser("lint", help="check an ONNX model against TensorRT 8.5's parser and Q/DQ rules")
    p.add_argument("model")
    p.set_defaults(func=_cmd_lint)

    p = sub.add_parser("show-recipe", parents=[recipe_args], help="print a recipe with every default filled in")
    p.set_defaults(func=_cmd_show_recipe)
    return parser


def _terminate_like_interrupt() -> None:
    """`docker stop` and schedulers send SIGTERM: unwind as for Ctrl-C, so temporary files go away."""
    import signal

    def handler(signum, frame):  # noqa: ANN001, ARG001
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        pass


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Optional[Callable[[argparse.Namespace], int]] = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    _terminate_like_interrupt()
    try:
        return func(args)
    except EdgekitError as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else "error"
        print("edgekit: error: " + message, file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("edgekit: interrupted; finished stages and epochs are kept, run the same command to resume",
              file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
