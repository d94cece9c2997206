"""MobileNetV2 (torchvision's definition: inverted residuals, ReLU6, width 1.0).

Torch-Pruning traces everything it needs: each depthwise convolution is pruned together with the
expansion convolution that feeds it, and the residual additions tie the projections of a stage.
"""

import torchvision
from torch import nn

from .base import Architecture


class MobileNetV2(Architecture):
    name = "mobilenet_v2"
    title = "MobileNetV2"
    head = "classifier.1"  # classifier.0 is the dropout
    downsampling = 32
    min_image_size = 32
    latency_target = True

    def build(self, num_classes: int) -> nn.Module:
        return torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes)


MOBILENET_V2 = MobileNetV2()
