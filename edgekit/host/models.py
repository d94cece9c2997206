"""The names this module had before architectures became plugins, for code written against them.

New code imports from `edgekit.host.arch` (the registry and the generic parts) and its family files;
the names whose meaning changed (width specs are keyed by module name now, and saving a model names
its architecture) are not kept here.
"""

from typing import Any, Callable, Dict, Tuple

import torchvision
from torch import nn

from ..widthspec import stage_widths as widths_summary  # noqa: F401
from .arch import architecture, count_macs_params, load_any, load_student  # noqa: F401

ARCH = "resnet50"


def resnet50(num_classes: int = 1000, zero_init_residual: bool = False) -> nn.Module:
    """torchvision's ResNet-50 (v1.5), randomly initialised; weights are never downloaded."""
    return torchvision.models.resnet50(weights=None, num_classes=num_classes, zero_init_residual=zero_init_residual)


def load_resnet50_checkpoint(path: str, num_classes: Any = None,
                             log: Callable[[str], None] = print) -> Tuple[nn.Module, Dict[str, Any]]:
    """A checkpoint or model file of any registered architecture (the name predates the others)."""
    if num_classes is None:
        return load_any(path, log=log)
    return architecture(ARCH).load_checkpoint(path, num_classes, log=log)
