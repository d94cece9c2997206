"""A tiny training job for tests/test_dist.py, started by `torchrun --nproc_per_node=2` (or plainly).

    ddp_worker.py OUT_DIR REPORT_DIR EPOCHS [STOP_AFTER_EPOCH]

Trains a small MLP with BatchNorm on 8x8 digits with edgekit's loop (checkpoint in OUT_DIR), and writes
REPORT_DIR/rank<R>.json: the sample indices this rank trained on, the history, the learning rate
in effect, every write this process made under OUT_DIR (seen by a Python audit hook, which sees
os.open, os.replace and friends, whoever calls them), and rank 0's single-process top-1 of the
final model over the whole val split.
"""

import json
import os
import sys

import torch
from torch.utils.data import Dataset

from edgekit.host.compress.distill import train
from edgekit.host.data import evaluate_top1, load_data
from edgekit.host.dist import setup
from edgekit.recipe import DataConfig, OptimizerConfig, Recipe, TrainConfig

out_dir, report_dir, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
stop_after = int(sys.argv[4]) if len(sys.argv) > 4 else None
out_real = os.path.realpath(out_dir)
writes = []


def audit(event, args):
    path = None
    if event == "open" and args and isinstance(args[0], (str, bytes)):
        mode, flags = args[1], args[2]
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        path = args[0] if writing else None
    elif event in ("os.replace", "os.rename", "os.remove", "os.mkdir", "os.rmdir", "os.chmod") and args:
        path = args[1] if event in ("os.replace", "os.rename") else args[0]
    if isinstance(path, (str, bytes)):
        path = os.fsdecode(path)
        real = os.path.realpath(path)
        if real == out_real or real.startswith(out_real + os.sep):
            writes.append([event, path])


sys.addaudithook(audit)


class Recorded(Dataset):
    """The digits train split, remembering which indices this process drew."""

    def __init__(self, inner):
        self.inner, self.seen = inner, []

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        self.seen.append(int(i))
        return self.inner[i]


recipe = Recipe(train=TrainConfig(device="cpu", log_every=2, lr_scaling="linear"))
d = setup(recipe)
torch.manual_seed(0)
data = load_data(DataConfig(image_size=8, max_train_samples=128, max_val_samples=50, batch_size=16), seed=0)
data.train = Recorded(data.train)
torch.manual_seed(1)
# BatchNorm: its running statistics differ between ranks after the last step unless synchronised.
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 32), torch.nn.BatchNorm1d(32),
                            torch.nn.ReLU(), torch.nn.Linear(32, 10))
opt = OptimizerConfig(name="sgd", lr=0.05, schedule="constant", momentum=0.9)
steps = {"n": 0}


class Stop(Exception):
    pass


def stop(_model):
    steps["n"] += 1
    if stop_after is not None and steps["n"] > stop_after * (len(data.train) // (16 * d.world_size)):
        raise Stop()


history = []
stopped = False
try:
    history = train(model, data, epochs, opt, checkpoint=os.path.join(out_dir, "job.train.pt"), key="k",
                    seed=3, desc="ddp", post_step=stop, log=print, train_cfg=recipe.train)
except Stop:
    stopped = True
full_top1 = evaluate_top1(model, data.val_loader()) if d.is_writer else None
report = {"rank": d.rank, "world_size": d.world_size, "seen": data.train.seen, "history": history,
          "stopped": stopped, "writes": writes, "full_top1": full_top1, "backend": d.backend,
          "bn_running_mean": model[2].running_mean.tolist()}
os.makedirs(report_dir, exist_ok=True)
with open(os.path.join(report_dir, "rank{}.json".format(d.rank)), "w", encoding="utf-8") as f:
    json.dump(report, f)
d.cleanup()
