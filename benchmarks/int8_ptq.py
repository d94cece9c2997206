"""Where post-training INT8 loses accuracy, and what the per-layer fallback buys back.

Trains a torchvision classifier (default MobileNetV2: depthwise convolutions, the classic PTQ casualty)
from scratch on scikit-learn's digits, exports it, then runs edgekit's INT8 path on it exactly as the
pipeline's quantize and fallback stages do: one calibration, every calibrator scored on the val split,
the fallback to `--max-drop`, the twin check, and the p50 latency of INT8 with and without the fallback,
measured side by side. `--per-tensor` uses one weight scale per tensor (`quantize.per_channel: false`).

    .venv/bin/python benchmarks/int8_ptq.py --arch mobilenet_v2 --epochs 10 --per-tensor --threads 1 --out /tmp/int8_ptq

Writes `<out>/report.json` and prints the tables. Nothing is downloaded: the weights start random.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import onnx
import torch
import torchvision

from edgekit.artifacts import write_json_atomic
from edgekit.device import layout
from edgekit.host.compress.distill import train
from edgekit.host.compress.quantize import calibration_ranges, quantize
from edgekit.host.compress.quantize.evaluate import side_by_side_p50, top1
from edgekit.host.compress.quantize.fallback import fallback_to_budget
from edgekit.host.compress.quantize.qdq import keep_float, layer_precisions, write_cpu
from edgekit.host.compress.quantize.twin import ptq_twin
from edgekit.host.data import evaluate_top1, load_data
from edgekit.host.export import export_onnx
from edgekit.recipe import DataConfig, OptimizerConfig
from edgekit.trtlint import check_tensorrt_compatible


def _model(arch: str, classes: int) -> torch.nn.Module:
    return getattr(torchvision.models, arch)(num_classes=classes)


def _trained(args: argparse.Namespace, data) -> torch.nn.Module:  # noqa: ANN001
    model = _model(args.arch, data.num_classes)
    path = os.path.join(args.out, "{}.pt".format(args.arch))
    if os.path.exists(path):
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    opt = OptimizerConfig(name="adamw", lr=args.lr, weight_decay=0.05, schedule="onecycle", warmup_fraction=0.2)
    train(model, data, args.epochs, opt, checkpoint=path + ".train", key=args.arch, seed=0, desc=args.arch)
    torch.save(model.state_dict(), path)
    return model.eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mobilenet_v2", help="a torchvision classifier builder")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor")
    parser.add_argument("--method", default="entropy", help="calibration method (the recipe's default: entropy; "
                        "best: the highest top-1)")
    parser.add_argument("--max-drop", type=float, default=0.5)
    parser.add_argument("--calibration-samples", type=int, default=256)
    parser.add_argument("--held-out", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/int8_ptq")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    data = load_data(DataConfig(image_size=args.image_size, batch_size=64), seed=0)
    model = _trained(args, data)
    fp32_path = os.path.join(args.out, layout.FP32)
    export_onnx(model, fp32_path, args.image_size)
    val = lambda: ((x.numpy(), y.numpy()) for x, y in data.val_loader())  # noqa: E731
    per_channel = not args.per_tensor
    pool = np.concatenate([b.numpy() for b in data.calibration_batches(args.calibration_samples + args.held_out)])
    calibration = [pool[i:i + 32] for i in range(0, args.calibration_samples, 32)]
    started = time.perf_counter()
    quant = quantize(fp32_path, args.out, calibration, args.method, per_channel=per_channel, evaluation=val,
                     threads=args.threads)
    fp32_top1 = top1(fp32_path, val, args.threads)
    qdq = onnx.load(quant["paths"]["qdq"])
    result = fallback_to_budget(qdq, fp32_path, val, lambda: pool[args.calibration_samples:], fp32_top1,
                                args.max_drop, args.threads, print)
    kept = result["kept"]
    kept_path = os.path.join(args.out, "fallback.qdq.onnx")
    onnx.save(keep_float(qdq, kept), kept_path)
    write_cpu(fp32_path, os.path.join(args.out, "fallback.cpu.onnx"), calibration_ranges(quant["paths"]["ranges"]),
              per_channel, exclude=kept)
    for path in (quant["paths"]["qdq"], kept_path):
        check_tensorrt_compatible(path)
    twin = ptq_twin(onnx.load(fp32_path), calibration_ranges(quant["paths"]["ranges"]), kept, per_channel,
                    kept_path, val, args.threads)
    sample = next(iter(data.val_loader()))[0][:1].numpy()
    # the onnxruntime CPU flavours: the TensorRT Q/DQ flavour is not built to run fast on a CPU
    latency = side_by_side_p50({"fp32": fp32_path, "ptq_cpu": quant["paths"]["cpu"],
                                "fallback_cpu": os.path.join(args.out, "fallback.cpu.onnx")}, sample,
                               args.threads, 200, 2.0)
    report = {"arch": args.arch, "image_size": args.image_size, "per_channel": per_channel,
              "pytorch_top1": round(evaluate_top1(model, data.val_loader()), 3), "fp32_onnx_top1": fp32_top1,
              "methods_top1": quant["methods"], "method": quant["method"], "why": quant["why"],
              "fallback": result, "layer_precisions": layer_precisions(onnx.load(fp32_path), kept), "twin": twin,
              "latency": latency, "seconds": round(time.perf_counter() - started, 1), "command": sys.argv}
    write_json_atomic(os.path.join(args.out, "report.json"), report)
    _print(report)
    return 0


def _print(report: dict) -> None:
    print("\n{} on digits {}px, {} weights; FP32 top-1 {:.2f}%".format(
        report["arch"], report["image_size"], "per-channel" if report["per_channel"] else "per-tensor",
        report["fp32_onnx_top1"]))
    for name, score in report["methods_top1"].items():
        print("  {:<18} {:6.2f}%".format(name, score))
    print("chosen: {} ({})".format(report["method"], report["why"]))
    fb = report["fallback"]
    print("fallback to max_drop {}: {} layer(s) kept, top-1 {:.2f}% -> {:.2f}%".format(
        fb["max_drop"], len(fb["kept"]), fb["top1_before"], fb["top1_after"]))
    for layer in fb["kept_layers"]:
        print("  {:<40} KL {:.5f}".format(layer["node"], layer["kl"]))
    print("latency (p50 ms, side by side): " + json.dumps(report["latency"]))
    print("twin: " + json.dumps(report["twin"]))


if __name__ == "__main__":
    sys.exit(main())
