"""EfficientNet-B0 (torchvision's definition: MBConv blocks with SiLU and squeeze-excite).

Stochastic depth and dropout are training-time only: the traced graph (eval mode) and the ONNX export
see plain residual additions. SiLU exports as Sigmoid and Mul, squeeze-excite as GlobalAveragePool,
two 1x1 convolutions and a Mul, all of which TensorRT 8.5 parses.
"""

import torchvision
from torch import nn

from .base import Architecture


class EfficientNetB0(Architecture):
    name = "efficientnet_b0"
    title = "EfficientNet-B0"
    head = "classifier.1"  # classifier.0 is the dropout
    downsampling = 32
    min_image_size = 32
    latency_target = True

    def build(self, num_classes: int) -> nn.Module:
        return torchvision.models.efficientnet_b0(weights=None, num_classes=num_classes)


EFFICIENTNET_B0 = EfficientNetB0()
