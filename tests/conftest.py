"""Shared fixtures: tiny pipeline runs, cached for the whole session (they cost seconds each)."""

import os
import sys

import pytest
from fake_trt import fake_gpu  # noqa: F401 - the strict TensorRT/pycuda fakes as a fixture, with their exit check

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Small enough for CI's 2 cores, big enough to exercise every stage for real.
TINY = [
    "data.image_size=16", "data.max_train_samples=256", "data.max_val_samples=128",
    "teacher.epochs=1", "prune.rounds=2", "distill.epochs_per_round=1", "distill.final_epochs=0",
    "threads=2", "data.calibration_samples=32", "quantize.report_samples=8",
    "bench.min_queries=5", "bench.min_seconds=0.05",
    "compare.image_size=32", "compare.batches=[1,2]", "compare.min_queries=5", "compare.min_seconds=0.05",
    "compare.calibration_samples=8",
]


def default_sigint():
    """Child set-up: a shell that starts jobs in the background (CI may) leaves SIGINT ignored, and
    Python keeps it ignored; give the child the default handler, as a terminal's Ctrl-C finds it."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def edgekit_cmd(*args: str):
    """The installed console script of this environment."""
    return [os.path.join(os.path.dirname(sys.executable), "edgekit"), *args]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """Run the main job on the digits default at tiny sizes; returns (out_dir, summary, log lines)."""
    from edgekit.host.pipeline import run
    from edgekit.recipe import load_recipe

    out = str(tmp_path_factory.mktemp("tiny") / "digits")
    lines = []
    summary = run(load_recipe("digits", TINY), out, log=lines.append)
    return out, summary, lines


def _tensorrt_missing():
    try:
        import pycuda.driver as cuda
        import tensorrt  # noqa: F401

        cuda.init()
        if cuda.Device.count() == 0:
            return "no CUDA device"
    except Exception as exc:  # noqa: BLE001 - any import or driver failure means: not here
        return "TensorRT/pycuda not usable here ({}); run `make test-device` on a Jetson or in the Jetson image".format(
            type(exc).__name__)
    return None


def _gpu_missing():
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    return None if torch.cuda.is_available() else "no CUDA GPU here; run `make test-device` on a GPU machine"


def pytest_collection_modifyitems(config, items):
    """Hardware tiers skip with the reason where the hardware is missing (and run where it is)."""
    reasons = {}
    for item in items:
        for marker in ("tensorrt", "gpu"):
            if item.get_closest_marker(marker):
                if marker not in reasons:
                    reasons[marker] = _tensorrt_missing() if marker == "tensorrt" else _gpu_missing()
                if reasons[marker]:
                    item.add_marker(pytest.mark.skip(reason=reasons[marker]))
