"""MobileNetV3-Large (torchvision's definition: Hardswish, squeeze-excite with Hardsigmoid).

Torch-Pruning couples each squeeze-excite's expanding 1x1 convolution with the channels it scales,
and prunes its squeezed width on its own. The 960 -> 1280 layer before the classifier is prunable;
only the classifier's outputs (the classes) stay. The export needs nothing special: HardSwish and
HardSigmoid are ONNX ops that TensorRT 8.5's parser imports (edgekit.trtlint).
"""

import torchvision
from torch import nn

from .base import Architecture


class MobileNetV3Large(Architecture):
    name = "mobilenet_v3_large"
    title = "MobileNetV3-Large"
    head = "classifier.3"  # Linear 960->1280, Hardswish, Dropout, then this one
    downsampling = 32
    min_image_size = 32
    latency_target = True

    def build(self, num_classes: int) -> nn.Module:
        return torchvision.models.mobilenet_v3_large(weights=None, num_classes=num_classes)


MOBILENET_V3_LARGE = MobileNetV3Large()
