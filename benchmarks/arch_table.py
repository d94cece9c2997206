"""One row per shipped architecture: `edgekit run --recipe digits-<arch>`, a `cpu` deploy, and the figures
side by side (teacher and student top-1, the student's MACs and params ratios, each exported model's
top-1 as the device side measured it, and onnxruntime's FP32 and INT8 p50 at 224x224, batch 1, dense vs
ours, from the run's compare stage).

    python benchmarks/arch_table.py --out /tmp/arch --run          # run and deploy each recipe, then tabulate
    python benchmarks/arch_table.py --out /tmp/arch                # tabulate runs already there

A run takes 4-40 minutes on a 2-core CPU (ResNet-50 is the slowest); finished stages are reused.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
from typing import Any, Dict, List, Optional

RECIPES = ("digits", "digits-mobilenetv2", "digits-mobilenetv3", "digits-efficientnet")


def run_and_deploy(recipe: str, out: str) -> None:
    runs, results = os.path.join(out, "runs", recipe), os.path.join(out, "results")
    edgekit = [sys.executable, "-m", "edgekit.cli"]
    for args in (["run", "--recipe", recipe, "--out", runs],
                 ["deploy", "--target", "cpu", "--recipe", recipe, "--out", runs, "--results", results,
                  "--dashboard", os.path.join(out, "dashboard.html")]):
        print("$ edgekit " + " ".join(args), flush=True)
        subprocess.run(edgekit + args, check=True)


def _p50(rows: List[Dict[str, Any]], model: str, precision: str) -> Optional[float]:
    return next((r["p50_ms"] for r in rows if r["model"] == model and r["runtime"] == "onnxruntime"
                 and r["precision"] == precision and r["batch"] == 1), None)


def device_top1(results: str, recipe: str) -> Dict[str, float]:
    """model file -> top-1 of the newest `cpu` result of the student's models."""
    found: Dict[str, Any] = {}
    for path in sorted(glob.glob(os.path.join(results, "cpu", "{}.student.*.json".format(recipe)))):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        found[data["model"]["path"]] = data["accuracy"]["top1"]
    return found


def row(out: str, recipe: str) -> Optional[Dict[str, Any]]:
    path = os.path.join(out, "runs", recipe, "summary.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        s = json.load(f)
    rows = s.get("compare", {}).get("rows", [])
    t, st = s["teacher"], s["student"]
    return {"recipe": recipe, "arch": s["recipe_config"]["model"]["arch"], "teacher": t["top1"], "student": st["top1"],
            "macs": st["macs"] / t["macs"], "params": st["params"] / t["params"],
            "device": device_top1(os.path.join(out, "results"), recipe),
            "ort": {k: _p50(rows, *k.split()) for k in ("dense fp32", "ours fp32", "dense int8", "ours int8")}}


def fmt(value: Optional[float], spec: str = "{:.2f}") -> str:
    return "-" if value is None else spec.format(value)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder of runs/<recipe> and results/")
    ap.add_argument("--run", action="store_true", help="run and deploy each recipe first")
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES))
    args = ap.parse_args()
    if args.run:
        for recipe in args.recipes:
            run_and_deploy(recipe, args.out)
    print("| recipe | teacher top-1 | student top-1 | MACs | params | device-side top-1 (cpu) | "
          "ORT FP32 p50 dense / ours (ms) | ORT INT8 p50 dense / ours (ms) |")
    print("|---|---|---|---|---|---|---|---|")
    for recipe in args.recipes:
        r = row(args.out, recipe)
        if r is None:
            print("| {} | not run | | | | | | |".format(recipe))
            continue
        device = ", ".join("{} {:.2f}".format(k.replace("model.", "").replace(".onnx", ""), v)
                           for k, v in sorted(r["device"].items())) or "-"
        print("| {} ({}) | {:.2f} | {:.2f} | {:.1%} | {:.1%} | {} | {} / {} | {} / {} |".format(
            recipe, r["arch"], r["teacher"], r["student"], r["macs"], r["params"], device,
            fmt(r["ort"]["dense fp32"]), fmt(r["ort"]["ours fp32"]), fmt(r["ort"]["dense int8"]),
            fmt(r["ort"]["ours int8"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
