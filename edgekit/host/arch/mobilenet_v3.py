"""MobileNetV3-Large (torchvision's definition: Hardswish, squeeze-excite with Hardsigmoid).

Torch-Pruning couples each squeeze-excite's expanding 1x1 convolution with the channels it scales,
and prunes its squeezed width on its own. The 960 -> 1280 layer before the classifier is prunable;
only the classifier's outputs (the classes) stay. The export needs nothing special: HardSwish and
HardSigmoid are ONNX ops that TensorRT 8.5's parser imports (edgekit.trtlint).

BatchNorm momentum is PyTorch's 0.1, not the 0.01 torchvision sets for its long ImageNet schedule:
at 0.01 the running statistics of a short run from scratch lag the weights so far that the digits
teacher scored 10.0% in eval mode (chance) while the same weights scored 98.6% on batch statistics.
Momentum is no weight, so torchvision's pretrained checkpoints load unchanged.
"""

from functools import partial

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
        norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.1)
        return torchvision.models.mobilenet_v3_large(weights=None, num_classes=num_classes, norm_layer=norm)


MOBILENET_V3_LARGE = MobileNetV3Large()
