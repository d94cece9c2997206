"""Test-only: with this folder on PYTHONPATH, an interpreter behaves as if PyTorch were not installed (the
device side's world): importing torch, torchvision, torch_pruning or torch_tensorrt fails exactly as a
missing package does, with ModuleNotFoundError naming the top-level module."""

import sys

BLOCKED = ("torch", "torchvision", "torch_pruning", "torch_tensorrt")


class _Absent(object):
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in BLOCKED:
            raise ModuleNotFoundError("No module named {!r}".format(top), name=top)
        return None


sys.meta_path.insert(0, _Absent())
