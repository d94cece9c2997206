import math
import os

import pytest
import torch

from edgekit.host.compress.distill import kd_loss, train
from edgekit.host.data import load_data
from edgekit.recipe import DataConfig, OptimizerConfig


def _log_softmax(row, t):
    scaled = [v / t for v in row]
    top = max(scaled)
    log_z = top + math.log(sum(math.exp(v - top) for v in scaled))
    return [v - log_z for v in scaled]


def test_kd_loss_equals_the_formula_computed_by_hand():
    s = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    t = [[2.0, 1.0, 0.0], [0.5, 0.5, 2.0]]
    y = [1, 2]
    alpha, temp = 0.7, 2.0
    ce = sum(-_log_softmax(s[i], 1.0)[y[i]] for i in range(2)) / 2
    kl = 0.0
    for i in range(2):
        log_p, log_q = _log_softmax(t[i], temp), _log_softmax(s[i], temp)
        kl += sum(math.exp(a) * (a - b) for a, b in zip(log_p, log_q))
    kl /= 2
    expected = (1 - alpha) * ce + alpha * temp ** 2 * kl
    got = kd_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), alpha, temp)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    # hand-checked constant, so a bug shared by the formula above and the code still fails
    assert float(got) == pytest.approx(0.4038490, rel=1e-5)  # CE 0.265126, KL 0.115825


def test_kd_loss_limits():
    s = torch.tensor([[1.0, 2.0, 0.5]])
    y = torch.tensor([0])
    ce = torch.nn.functional.cross_entropy(s, y)
    assert torch.allclose(kd_loss(s, s + 5.0, y, 0.0, 4.0), ce)          # alpha 0: plain CE
    assert float(kd_loss(s, s + 5.0, y, 1.0, 4.0)) == pytest.approx(0.0, abs=1e-6)  # same softmax: no KL
    assert torch.allclose(kd_loss(s, None, y, 0.7, 4.0), ce)             # no teacher: CE


class _Stop(Exception):
    pass


def test_training_checkpoints_every_epoch_and_resumes(tmp_path):
    torch.manual_seed(0)
    data = load_data(DataConfig(image_size=8, max_train_samples=96, max_val_samples=32, batch_size=32), seed=0)
    opt = OptimizerConfig(name="adamw", lr=1e-3)

    def model():
        torch.manual_seed(1)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))

    straight = model()
    full = train(straight, data, 3, opt, checkpoint=str(tmp_path / "a.pt"), key="k", seed=0, desc="a",
                 log=lambda m: None)

    interrupted = model()
    steps = {"n": 0}

    def stop_in_epoch_two(_model):
        steps["n"] += 1
        if steps["n"] == 4:  # 3 batches per epoch: the first step of epoch 2
            raise _Stop()

    ckpt = str(tmp_path / "b.pt")
    with pytest.raises(_Stop):
        train(interrupted, data, 3, opt, checkpoint=ckpt, key="k", seed=0, desc="b",
              post_step=stop_in_epoch_two, log=lambda m: None)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 0
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []

    messages = []
    resumed = model()
    history = train(resumed, data, 3, opt, checkpoint=ckpt, key="k", seed=0, desc="b", log=messages.append)
    assert any("resuming after epoch 1/3" in m for m in messages)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    # The resumed run saw the same batches and optimizer state: it ends where the straight run ends.
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.allclose(a, b, atol=1e-5)
    assert history[-1]["val_top1"] == full[-1]["val_top1"]

    # A checkpoint written for another configuration is not reused.
    messages.clear()
    train(model(), data, 1, opt, checkpoint=ckpt, key="other", seed=0, desc="c", log=messages.append)
    assert not any("resuming" in m for m in messages)
