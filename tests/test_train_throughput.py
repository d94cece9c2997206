"""benchmarks/train_throughput.py end to end at toy sizes: both steps, the loader, the ETA, one JSON line."""

import json
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                      "train_throughput.py")


@pytest.mark.slow
def test_train_throughput_reports_both_steps_and_the_loader():
    proc = subprocess.run([sys.executable, SCRIPT, "--device", "cpu", "--image-size", "16", "--batch-size", "4",
                           "--steps", "2", "--warmup", "1", "--repeats", "1", "--classes", "10",
                           "--recipe", "digits", "--threads", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for step in ("ce", "kd"):
        assert result[step]["bare_img_s"] > 0 and result[step]["edgekit_img_s"] > 0
    assert 0.4 < result["kd"]["student_macs_ratio"] <= 0.5
    assert result["loader_img_s"] > 0
    assert result["eta"]["recipe"] == "digits" and result["eta"]["seconds"] > 0
