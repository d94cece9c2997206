"""Multiply-accumulates and parameters of a model, counted by Torch-Pruning on a traced forward pass."""

from typing import Tuple

import torch
from torch import nn


def count_macs_params(model: nn.Module, image_size: int) -> Tuple[int, int]:
    """Multiply-accumulates of one forward pass at `image_size`² (batch 1), and parameters."""
    import torch_pruning as tp

    was_training = model.training
    example = torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device)
    macs, params = tp.utils.count_ops_and_params(model, example)
    model.train(was_training)
    return int(macs), int(params)
