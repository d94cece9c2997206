"""The `edgekit` command: parse flags, call one library function, print, exit.

User errors (EdgekitError) print one line on stderr and exit with status 2, no traceback.
Heavy modules are imported inside the subcommand that needs them, so `edgekit --help` is instant
and device-side subcommands never pull in torch.
"""

import argparse
import json
import os
import sys
from typing import Any, Callable, List, Optional

from . import __version__
from .errors import EdgekitError

DASHBOARD = os.path.join("benchmarks", "dashboard", "index.html")
RESULTS_DIR = os.path.join("benchmarks", "results")
RESUMABLE = "interrupted; finished stages and epochs are kept, run the same command to resume"


def _log(message: str) -> None:
    print(message, flush=True)


def _cmd_run(args: argparse.Namespace) -> int:
    from .recipe import check_inputs, default_out_dir, load_recipe

    overrides = list(args.set or [])
    if args.threads is not None:
        overrides.append("threads={}".format(args.threads))
    recipe = load_recipe(args.recipe, overrides)
    check_inputs(recipe)
    out = default_out_dir(recipe, args.out)
    from .host.dist import setup
    from .host.pipeline import run

    # Under torchrun: join the job; rank 0 alone writes and talks. Otherwise one process.
    world = setup(recipe)
    log = _log if world.is_writer else (lambda message: None)
    log("edgekit {}: {} -> {}{}".format(__version__, _recipe_label(args.recipe, recipe.name), out,
                                        " ({} processes, {})".format(world.world_size, world.backend)
                                        if world.distributed else ""))
    try:
        run(recipe, out, force=args.force, force_stages=args.force_stage or (), log=log, world=world)
    finally:
        world.cleanup()
    return 0


def _recipe_label(asked: str, name: str) -> str:
    return "recipe {}".format(name) if asked == name else "recipe {}, named {}".format(asked, name)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .inspection import describe, inspect_model

    facts = inspect_model(args.path, args.image_size, args.width_spec)
    if args.json:
        print(json.dumps(facts, indent=2))
    else:
        for line in describe(facts):
            print(line)
    return 0


def _cmd_build_engine(args: argparse.Namespace) -> int:
    from .device.engine.builder import BuildConfig, build_engine, plan_build, trtexec_command

    cfg = BuildConfig(args.onnx, engine_path=args.out, precision=args.precision, dla_core=args.dla,
                      gpu_fallback=not args.no_gpu_fallback, workspace_mb=args.workspace_mb,
                      optimization_level=args.optimization_level, min_batch=args.min_batch,
                      opt_batch=args.opt_batch, max_batch=args.max_batch, static_batch=args.batch,
                      timing_cache=args.timing_cache, calibration_cache=args.calib,
                      layer_precisions=args.layer_precisions)
    shape = None
    if args.input_shape:
        try:
            shape = [int(d) for d in args.input_shape.lower().split("x")]
        except ValueError:
            raise EdgekitError("--input-shape expects CxHxW, e.g. 3x224x224, got {!r}".format(
                args.input_shape)) from None
    if args.print_plan:
        print(json.dumps(plan_build(cfg, shape), indent=2))
    if args.print_trtexec:
        print(trtexec_command(cfg, shape))
    if args.print_plan or args.print_trtexec:
        return 0
    build_engine(cfg, log=_log, force=args.force)
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    from .deploy import deploy, device_python, reach, transport_for
    from .recipe import check_inputs, default_out_dir, load_recipe
    from .targets import load_target, resolve_target_path

    # Arguments, files and the device first: a missing flag or an unreachable host should cost
    # seconds, not the host side's import (torch) and its stages.
    target = load_target(args.target)
    recipe = load_recipe(args.recipe, args.set)
    check_inputs(recipe)
    out = default_out_dir(recipe, args.out)
    transport = transport_for(target, recipe.name, out, args.device, args.ssh_port, args.ssh_key, args.known_hosts)
    reached = reach(target, transport, device_python(target, args.device, args.device_python), log=_log)
    _log("[host] stages of {} -> {}".format(_recipe_label(args.recipe, recipe.name), out))
    from .host.pipeline import run

    run(recipe, out, log=_log)
    deploy(out, target, resolve_target_path(args.target), reached, recipe=recipe.name, results_root=args.results,
           seconds=args.seconds, dashboard=args.dashboard, log=_log)
    return 0


def _cmd_run_jobs(args: argparse.Namespace) -> int:
    from .device.jobs import run_jobs

    errors = run_jobs(args.jobs, log=_log)
    if errors:
        print("edgekit: {} job(s) failed: {} (results/*.error.json say why)".format(
            len(errors), ", ".join(e["stem"] for e in errors)), file=sys.stderr, flush=True)
        return 3
    return 0


def _cmd_lint(args: argparse.Namespace) -> int:
    from .trtlint import by_rule, lint

    found = lint(args.model)
    groups = by_rule(found)
    if args.all:
        for violation in found:
            print("{}: {}".format(args.model, violation))
    elif found:
        print("{}: {} TensorRT 8.5 violation(s) of {} rule(s) (--all lists every node):".format(
            args.model, len(found), len(groups)))
        width = max(len(rule) for rule in groups)
        for rule, violations in groups.items():
            print("  {:<{}} {:>5} x  e.g. {}".format(rule, width, len(violations), violations[0]))
    if found:
        raise EdgekitError("{} has {} TensorRT 8.5 violation(s) of {} rule(s) ({}); the first: {}".format(
            args.model, len(found), len(groups), ", ".join(groups), found[0]))
    print("{}: TensorRT 8.5 compatible (opset, ops, weights, Q/DQ placement)".format(args.model))
    return 0


def _cmd_show_recipe(args: argparse.Namespace) -> int:
    import yaml

    from .recipe import load_recipe

    recipe = load_recipe(args.recipe, args.set)
    print(yaml.safe_dump(recipe.to_dict(), sort_keys=False), end="")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .device.bench.harness import benchmark
    from .device.bench.results import save_csv
    from .summary import accuracy_for

    try:
        batches = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        raise EdgekitError("--batches expects comma-separated integers, e.g. 1,2,4,8") from None
    if args.harness == "loadgen":
        return _bench_loadgen(args, batches)
    if args.mode or "multi_stream" in (args.scenario or ()):
        raise EdgekitError("--mode and --scenario multi_stream are LoadGen's: add --harness loadgen")
    if args.concurrent:
        return _bench_concurrent(args, batches)
    if not args.model:
        raise EdgekitError("bench needs a model (an ONNX file or engine; {batch} for one engine per batch) or "
                           "--concurrent A,B")
    out = args.out or os.path.join("benchmarks", "results", "local",
                                   os.path.basename(args.model).replace("{batch}", "bN").rsplit(".", 1)[0] + ".json")
    scenarios = args.scenario or ("single_stream", "offline")
    accuracy = accuracy_for(args.summary, args.model, args.accuracy_from) if args.summary else None
    result = benchmark(args.model, out, runner=args.runner, threads=args.threads, scenarios=scenarios,
                       batches=batches, warmup=args.warmup, min_queries=args.queries, min_seconds=args.seconds,
                       power=not args.no_power, idle_seconds=args.idle_seconds, accuracy=accuracy,
                       cuda_graph=args.cuda_graph, precision=args.precision,
                       labels={"variant": args.variant, "target": args.target, "placement": args.placement,
                               "recipe": accuracy["dataset"] if accuracy else None},
                       eval_set=args.eval, log=_log, warmup_ms=args.warmup_ms, spin_wait=args.use_spin_wait,
                       power_total=args.power_total, soak_seconds=args.soak_seconds,
                       export_times_path=args.export_times, export_profile_path=args.export_profile)
    if result.get("throttled"):
        _log("warning: a measured window was throttled (over-current events, a hot or critical trip point, or "
             "the GPU clock below its locked value): see "
             "\"thermal\" in {}".format(out))
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


def _bench_loadgen(args: argparse.Namespace, batches: List[int]) -> int:
    from .device.bench.loadgen import Settings, benchmark_loadgen
    from .summary import accuracy_for

    if not args.model or args.concurrent:
        raise EdgekitError("--harness loadgen runs one model (an ONNX file or engine; {batch} for one engine per "
                           "batch)")
    out = args.out or os.path.join("benchmarks", "results", "local", os.path.basename(args.model).replace(
        "{batch}", "bN").rsplit(".", 1)[0] + ".loadgen.json")
    accuracy = accuracy_for(args.summary, args.model, args.accuracy_from) if args.summary else None
    settings = Settings(min_queries=args.queries, min_seconds=args.seconds, batch=max(batches or [1]),
                        warmup=args.warmup)
    benchmark_loadgen(args.model, out, runner=args.runner, threads=args.threads,
                      scenarios=args.scenario or ("single_stream", "offline"), modes=args.mode, settings=settings,
                      eval_set=args.eval, accuracy=accuracy, logs_root=args.mlperf_logs, precision=args.precision,
                      labels={"variant": args.variant, "target": args.target, "placement": args.placement,
                              "recipe": accuracy["dataset"] if accuracy else None},
                      cuda_graph=args.cuda_graph, spin_wait=args.use_spin_wait, log=_log)
    return 0


def _bench_concurrent(args: argparse.Namespace, batches: List[int]) -> int:
    from .device.bench.harness import benchmark_concurrent

    models = [m.strip() for m in args.concurrent.split(",") if m.strip()]
    if args.model:
        models.insert(0, args.model)
    out = args.out or os.path.join("benchmarks", "results", "local", "concurrent-{}.json".format(
        "+".join(os.path.basename(m).rsplit(".", 1)[0] for m in models)[:150]))
    result = benchmark_concurrent(models, out, runner=args.runner, threads=args.threads, batch=max(batches or [1]),
                                  warmup=args.warmup, min_seconds=args.seconds, power=not args.no_power,
                                  idle_seconds=args.idle_seconds, power_total=args.power_total,
                                  labels={"variant": args.variant, "target": args.target, "placement": args.placement},
                                  log=_log)
    measured = result["scenarios"]["concurrent_offline"]
    for engine in measured["engines"]:
        _log("  {:<40} {:>9.1f} img/s ({:.0%} of the images)".format(engine["model"], engine["throughput"],
                                                                   engine["share"] or 0.0))
    power = measured.get("power") or {}
    _log("together: {:.1f} img/s{}".format(measured["throughput"], ", {:.2f} W, {:.3f} mJ/image".format(
        power["total_w"], power.get("mj_per_inference", float("nan"))) if power.get("status") == "ok" else ""))
    return 0


def _cmd_handoff(args: argparse.Namespace) -> int:
    from .handoff import package

    if args.kind == "deepstream":
        if len(args.model) != 1:
            raise EdgekitError("handoff deepstream packages one model; give one ONNX file or engine")
        package.deepstream(args.model[0], args.summary, args.out, precision=args.precision, build=args.build, log=_log)
        return 0
    package.triton(args.model, args.summary, args.out, results=args.result or [], name=args.name, log=_log)
    return 0


def _cmd_results(args: argparse.Namespace) -> int:
    from .report.store import build_index, format_failures, format_table, query_failures, query_runs, regressions

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
    failures = query_failures(index["path"], target=args.target, variant=args.variant, precision=args.precision,
                              recipe=args.recipe)
    if not runs and not failures:
        print("no runs match ({} indexed in {})".format(len(index["runs"]), index["path"]))
        return 0
    if runs:
        print(format_table(runs, flagged))
    if failures:
        print(format_failures(failures))
    print("{} of {} runs{}; index {}".format(len(runs), len(index["runs"]), ", {} failed job(s)".format(
        len(failures)) if failures else "", index["path"]))
    return 0


def _cmd_runners(args: argparse.Namespace) -> int:
    from .device.runtime.registry import status_lines

    for line in status_lines():
        print(line)
    return 0


def _cmd_latency_table(args: argparse.Namespace) -> int:
    from .device.latency.command import run
    from .recipe import load_recipe

    run(args, load_recipe(args.recipe, args.set), log=_log, describe=_describe_layers)
    return 0


def _describe_layers(recipe: Any, image_size: int, num_classes: int) -> Any:
    """The recipe's dense model described for its latency table (PyTorch: on the host only)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise EdgekitError("the layers of {} are derived from the model with PyTorch, which is not installed "
                           "here; pass --layers with a table or layers file written on the host".format(
                               recipe.model.arch)) from None
    from .host.arch import architecture

    arch = architecture(recipe.model.arch)
    return arch.latency_layers(arch.build(num_classes), image_size)


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from .report.dashboard import describe, write_dashboard

    summary = write_dashboard(args.results, args.out, threshold=args.threshold)
    for line in describe(summary):
        _log(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgekit", description="Prune, distill, quantize and benchmark image "
                                     "classifiers (ResNet-50, MobileNetV2/V3, EfficientNet-B0 or your own) for "
                                     "Jetson/TensorRT.")
    parser.add_argument("--version", action="version", version="edgekit " + __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    from .presets import preset_names

    recipe_args = argparse.ArgumentParser(add_help=False)
    recipe_args.add_argument("--recipe", default="digits",
                             help="a preset ({}; ./benchmarks/recipes/<name>.yaml wins) or a YAML path (default: "
                             "digits)".format(", ".join(preset_names("recipe"))))
    recipe_args.add_argument("--set", action="append", metavar="KEY=VALUE",
                             help="override a recipe field, e.g. --set distill.alpha=0.5 (repeatable)")
    for add in (_parser_run, _parser_inspect, _parser_bench, _parser_build_engine, _parser_deploy, _parser_run_jobs,
                _parser_handoff, _parser_results, _parser_dashboard, _parser_lint, _parser_latency_table,
                _parser_runners, _parser_show_recipe):
        add(sub, recipe_args)
    return parser


def _parser_run(sub: Any, recipe_args: argparse.ArgumentParser) -> None:
    from .host.stage_names import STAGE_NAMES

    stages = "run the host stages: {} (compress is the prune/distill spiral)".format(" -> ".join(STAGE_NAMES))
    p = sub.add_parser("run", parents=[recipe_args], help=stages, description=stages)
    p.add_argument("--out", help="artifacts folder (default: artifacts/<recipe name>)")
    p.add_argument("--force", action="store_true", help="recompute every stage instead of reusing finished ones")
    p.add_argument("--force-stage", action="append", metavar="STAGE",
                   help="recompute one stage and every stage after it that uses it ({}); repeatable".format(
                       ", ".join(STAGE_NAMES)))
    p.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    p.set_defaults(func=_cmd_run, interrupted=RESUMABLE)


def _parser_inspect(sub: Any, recipe_args: argparse.ArgumentParser) -> None:
    p = sub.add_parser("inspect", help="what a model file is: MACs, parameters and widths of a checkpoint "
                       "(torchvision layout or edgekit teacher/student); opset, inputs, outputs, nodes, MACs and "
                       "precision of an ONNX model")
    p.add_argument("path", help="a .pt/.pth checkpoint (torchvision ResNet-50, or edgekit's teacher.pt/student.pt) "
                   "or an .onnx model")
    p.add_argument("--image-size", type=int, help="checkpoints: count MACs at this input side (default: the size "
                   "the file records, else summary.json's beside it, else 224); ONNX models use their own input")
    p.add_argument("--width-spec", action="store_true", help="checkpoints: also print the full width spec")
    p.add_argument("--json", action="store_true", help="print the raw facts as JSON (exact counts)")
    p.set_defaults(func=_cmd_inspect)


def _parser_bench(sub: Any, recipe_args: argparse.ArgumentParser) -> None:
    p = sub.add_parser("bench", help="measure latency, throughput and power of an ONNX model (device side)")
    p.add_argument("model", nargs="?", help="an ONNX file or a TensorRT engine; '{batch}' in the path (e.g. "
                   "engines/student.int8.dla0.b{batch}.engine) runs one static engine per batch")
    p.add_argument("--out", help="result JSON (default: benchmarks/results/local/<model>.json)")
    p.add_argument("--csv", help="also write the rows as CSV here")
    p.add_argument("--summary", help="summary.json of the run that exported the model: records its top-1")
    p.add_argument("--runner", default="auto", help="auto (TensorRT when there and an engine was built from the "
                   "ONNX, else onnxruntime), or any runner `edgekit runners` lists")
    p.add_argument("--threads", type=int, help="runtime CPU threads (default: the runtime's choice)")
    p.add_argument("--scenario", action="append", choices=["single_stream", "multi_stream", "offline"],
                   help="repeatable; default single_stream and offline (multi_stream: --harness loadgen)")
    p.add_argument("--harness", choices=["edgekit", "loadgen"], default="edgekit", help="edgekit's own timing loop "
                   "(default), or MLPerf LoadGen (pip install mlcommons-loadgen): its logs, VALID/INVALID, "
                   "early stopping; Offline runs at the largest --batches size")
    p.add_argument("--mode", action="append", choices=["performance", "accuracy"], help="LoadGen: repeatable; "
                   "default performance, and accuracy (every --eval image once) when --eval is given")
    p.add_argument("--mlperf-logs", metavar="DIR", help="LoadGen: the Open-division-style log tree (default: "
                   "<--out without .json>.mlperf/)")
    p.add_argument("--batches", default="1,2,4,8", help="offline batch sweep (default 1,2,4,8)")
    p.add_argument("--warmup", type=int, default=10, help="untimed queries before each measured window (default "
                   "10)")
    p.add_argument("--queries", type=int, default=100, help="minimum measured queries (single-stream)")
    p.add_argument("--seconds", "--duration", type=float, default=3.0, dest="seconds",
                   help="minimum measured seconds per scenario/batch (trtexec's --duration)")
    p.add_argument("--warmup-ms", type=float, default=0.0, help="also warm up for at least this long (trtexec's "
                   "--warmUp)")
    p.add_argument("--use-spin-wait", action="store_true", help="TensorRT: wait on plain events, which spin, instead "
                   "of blocking-sync ones that let the CPU sleep (trtexec's --useSpinWait)")
    p.add_argument("--power-total", metavar="sum|RAIL", help="the board total: 'sum' adds every rail (AGX Xavier), "
                   "a rail name is already the total (VDD_IN on Orin, POM_5V_IN on Nano); default: that input rail "
                   "when present, else the sum")
    p.add_argument("--soak-seconds", type=float, default=0.0, help="run the model this long before measuring, so "
                   "the windows see a warm chip (thermal and clocks are recorded either way)")
    p.add_argument("--export-times", metavar="FILE", help="per-query times in trtexec's --exportTimes JSON layout "
                   "(the single-stream queries)")
    p.add_argument("--export-profile", metavar="FILE", help="TensorRT per-layer profile in trtexec's "
                   "--exportProfile JSON layout; the 10 slowest layers go into the result")
    p.add_argument("--concurrent", metavar="A,B,...", help="offline on these models at once, one thread each (GPU + "
                   "DLA0 + DLA1 engines), at the largest --batches size: each one's share and the combined "
                   "throughput and energy")
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
    p.set_defaults(func=_cmd_bench, scenario=None, interrupted="interrupted; no result was written (a result file "
                   "is written whole, once every scenario is measured): run the same command again")


def _parser_build_engine(sub: Any, recipe_args: argparse.ArgumentParser) -> None:
    p = sub.add_parser("build-engine", help="build a TensorRT engine from an exported ONNX model (on the device)")
    p.add_argument("onnx", help="model.int8.qdq.onnx (INT8 on the GPU), model.fp16.onnx / model.fp32.onnx")
    p.add_argument("--out", help="engine path (default: <model>.<precision>.<gpu|dlaN>.engine beside the ONNX)")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp16",
                   help="engine precision (default fp16); int8: explicit from a Q/DQ model, or implicit with --calib")
    p.add_argument("--dla", type=int, choices=[0, 1], help="build for DLA core 0 or 1 (GPU fallback on)")
    p.add_argument("--no-gpu-fallback", action="store_true", help="fail instead of running DLA-unsupported layers "
                   "on the GPU")
    p.add_argument("--calib", help="calib.cache for implicit INT8 (DLA)")
    p.add_argument("--layer-precisions", metavar="JSON", help="layer_precisions.json for implicit INT8: the layers "
                   "edgekit run's fallback kept in FP16, obeyed by the builder")
    p.add_argument("--workspace-mb", type=int, default=1024, help="builder workspace limit (default 1024 MiB)")
    p.add_argument("--optimization-level", type=int, choices=range(0, 6), help="TensorRT 8.6+ builder level")
    p.add_argument("--batch", type=int, help="a static batch instead of a min/opt/max profile (DLA: required for "
                   "batches other than 1; one engine per batch)")
    p.add_argument("--min-batch", type=int, help="GPU profile (default 1)")
    p.add_argument("--opt-batch", type=int, help="GPU profile: the batch TensorRT tunes kernels for (default: the "
                   "max, the batch Offline measures most)")
    p.add_argument("--max-batch", type=int, help="GPU profile (default 8)")
    p.add_argument("--timing-cache", help="persistent timing cache file (kept between builds)")
    p.add_argument("--input-shape", help="CxHxW for --print-trtexec/--print-plan (default: read from the ONNX)")
    p.add_argument("--print-trtexec", action="store_true", help="print the equivalent trtexec line and exit")
    p.add_argument("--print-plan", action="store_true", help="print the build plan as JSON (profiles, flags, "
                   "calibrator, device, DLA core, workspace) and exit; needs no TensorRT")
    p.add_argument("--force", action="store_true", help="rebuild even when an engine from this ONNX is up to date")
    p.set_defaults(func=_cmd_build_engine)


def _parser_deploy(sub: Any, recipe_args: argparse.ArgumentParser) -> None:
    p = sub.add_parser("deploy", parents=[recipe_args], help="host stages, then measure every variant on a device "
                       "over SSH (or here) and fetch the results")
    p.add_argument("--target", default="cpu", help="a target preset (shipped: cpu, xavier, orin, x86-gpu; "
                   "./deploy/targets/<name>.yaml wins) or a YAML path")
    p.add_argument("--device", help="user@host (or a host from ~/.ssh/config); none: measure here (target cpu)")
    p.add_argument("--seconds", type=float, default=1.0, help="minimum measured seconds per scenario and batch")
    p.add_argument("--ssh-port", type=int, help="the device's SSH port (default: 22, or ~/.ssh/config's)")
    p.add_argument("--ssh-key", help="private key file")
    p.add_argument("--known-hosts", help="known_hosts file to use instead of ~/.ssh/known_hosts")
    p.add_argument("--device-python", metavar="PATH", help="the device's Python that runs the jobs (default: the "
                   "target's python_bin, else python3 there; this Python here)")
    p.add_argument("--remote-python", dest="device_python", help=argparse.SUPPRESS)
    p.add_argument("--out", help="artifacts folder (default: artifacts/<recipe name>)")
    p.add_argument("--results", default=os.path.join("benchmarks", "results"), help="where results are fetched to")
    p.add_argument("--dashboard", default=DASHBOARD, help="the dashboard page refreshed after the fetch (default: "
                   "{})".format(DASHBOARD))
    p.set_defaults(func=_cmd_deploy, interrupted="interrupted; finished host stages and epochs, and jobs the device "
                   "finished, are kept: run the same command to resume")


def _parser_run_jobs(sub: Any, recipe_args: argparse.ArgumentParser) -> None:
    p = sub.add_parser("run-jobs", help="run a deploy bundle's jobs.json here (on the device): build engines, "
                       "bench, one process per step; resumable")
    p.add_argument("jobs", help="jobs.json in the bundle folder")
    p.set_defaults(func=_cmd_run_jobs)


def _parser_handoff(sub: Any, recipe_args: argparse.ArgumentParser) -> None:
    p = sub.add_parser("handoff", help="package a measured model for DeepStream (nvinfer config, labels, model) or "
                       "Triton (a model repository)")
    p.add_argument("kind", choices=["deepstream", "triton"], help="what to package for: deepstream or triton")
    p.add_argument("model", nargs="+", help="the measured ONNX file or engine (triton: several, e.g. the GPU and DLA "
                   "engines, one model each)")
    p.add_argument("--summary", required=True, help="summary.json of the run (its preprocessing contract)")
    p.add_argument("--out", required=True, help="the package folder (triton: the model repository)")
    p.add_argument("--result", action="append", help="triton: the bench result JSON of each model, in order (its "
                   "Offline sweep sets the preferred batch sizes)")
    p.add_argument("--name", default="model", help="triton: the model's name in the repository")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], help="deepstream: nvinfer's network-mode "
                   "(default: the engine's, else from the file name)")
    p.add_argument("--build", action="store_true", help="deepstream, with an engine: build the nvinfer model's engine "
                   "here with the measured engine's settings (needs TensorRT)")
    p.set_defaults(func=_cmd_handoff)



def _parser_results(sub: Any, recipe_args: argparse.ArgumentParser) -> None:
    p = sub.add_parser("results", help="index every result JSON (SQLite) and list runs as a table or CSV")
    p.add_argument("--results", default=RESULTS_DIR, help="results folder (default: benchmarks/results)")
    p.add_argument("--target", help="only this target (cpu, xavier, ...)")
    p.add_argument("--variant", help="only this variant (teacher, round1, student, ...)")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], help="only this precision")
    p.add_argument("--recipe", help="only this recipe")
    p.add_argument("--since", metavar="YYYY-MM-DD", help="runs from this date on")
    p.add_argument("--until", metavar="YYYY-MM-DD", help="runs up to this date")
    p.add_argument("--threshold", type=float, default=0.10, help="regression threshold as a fraction (default 0.10)")
    p.add_argument("--csv", action="store_true", help="CSV on stdout instead of a table")
    p.set_defaults(func=_cmd_results)


def _parser_dashboard(sub: Any, recipe_args: argparse.ArgumentParser) -> None:
    p = sub.add_parser("dashboard", help="write the offline benchmark dashboard (one self-contained HTML file)")
    p.add_argument("--results", default=RESULTS_DIR, help="results folder (default: benchmarks/results)")
    p.add_argument("--out", default=DASHBOARD, help="the HTML file to write (default: {})".format(DASHBOARD))
    p.add_argument("--threshold", type=float, default=0.10, help="regression threshold as a fraction (default 0.10)")
    p.set_defaults(func=_cmd_dashboard)


def _parser_lint(sub: Any, recipe_args: argparse.ArgumentParser) -> None:
    p = sub.add_parser("lint", help="check an ONNX model against TensorRT 8.5's parser and Q/DQ rules")
    p.add_argument("model", help="an ONNX file, e.g. artifacts/digits/model.int8.qdq.onnx")
    p.add_argument("--all", "--verbose", action="store_true", help="list every violating node (default: one line "
                   "per rule, with its count and an example)")
    p.set_defaults(func=_cmd_lint)


def _parser_latency_table(sub: Any, recipe_args: argparse.ArgumentParser) -> None:
    p = sub.add_parser("latency-table", parents=[recipe_args], help="measure a per-layer latency table for "
                       "latency-targeted pruning (host: onnxruntime-cpu, torch-cuda; device: tensorrt)")
    from .device.latency.command import add_arguments as latency_table_arguments

    latency_table_arguments(p)
    p.set_defaults(func=_cmd_latency_table)


def _parser_runners(sub: Any, recipe_args: argparse.ArgumentParser) -> None:
    p = sub.add_parser("runners", help="every runner and latency backend, what it runs, and what to install where "
                       "one cannot load here")
    p.set_defaults(func=_cmd_runners)


def _parser_show_recipe(sub: Any, recipe_args: argparse.ArgumentParser) -> None:
    p = sub.add_parser("show-recipe", parents=[recipe_args], help="print a recipe with every default filled in")
    p.set_defaults(func=_cmd_show_recipe)



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
        print("edgekit: " + getattr(args, "interrupted", "interrupted"), file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
