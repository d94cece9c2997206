"""ResNet-50 (torchvision's v1.5: the stride on each bottleneck's 3x3 convolution).

Besides the plugin, this file keeps ResNet-50's own compact spec, the *stage spec* that
`edgekit.model/1` files hold and that the latency tables are keyed by::

    {"arch": "resnet50",
     "stem": 64,                                  # conv1 / bn1 output channels
     "stages": [{"out": 256,                      # every block's conv3 (and downsample) output
                 "blocks": [[64, 64], ...]},      # per bottleneck: conv1 and conv2 outputs
                ...]}

A stage's output width is shared by all its blocks because the residual additions tie them together;
`stage_spec` checks that coupling and refuses a model that breaks it.
"""

from typing import Any, Dict

import torchvision
from torch import nn

from ...errors import EdgekitError
from ...widthspec import is_legacy
from .base import Architecture

BLOCKS = (3, 4, 6, 3)

StageSpec = Dict[str, Any]


class ResNet50(Architecture):
    name = "resnet50"
    title = "ResNet-50"
    head = "fc"
    downsampling = 32
    # Half the downsampling: the floor edgekit had before architectures were plugins (the last two
    # stages then run on 1x1 maps), kept so recipes and tests at 16 px still run.
    min_image_size = 16
    latency_target = True

    def build(self, num_classes: int) -> nn.Module:
        # Each block's last BatchNorm starts at zero, so every block starts as the identity (Goyal et
        # al., 2017): a teacher trained from scratch on few images converges faster and further.
        return torchvision.models.resnet50(weights=None, num_classes=num_classes, zero_init_residual=True)

    def check(self, model: nn.Module) -> None:
        stage_spec(model)

    def from_width_spec(self, spec: Dict[str, Any], num_classes: int) -> nn.Module:
        """Also the stem-and-stages spec of `edgekit.model/1` files, which predate module-keyed specs."""
        if is_legacy(spec):
            return from_stage_spec(spec, num_classes)
        return super().from_width_spec(spec, num_classes)

    def latency_layers(self, model: nn.Module, image_size: int) -> Any:
        """The built-in description (its 25 kinds, which a device can build with no file from the host)."""
        from ...device.latency.layers import dense_groups, groups_of, resnet50_net

        spec = stage_spec(model)
        if groups_of(spec) != dense_groups():
            raise EdgekitError("the latency table describes the dense ResNet-50; this one is pruned ({})".format(
                spec["stages"]))
        return resnet50_net(image_size)


RESNET50 = ResNet50()


def _layers(model: nn.Module) -> tuple:
    return (model.layer1, model.layer2, model.layer3, model.layer4)


def stage_spec(model: nn.Module) -> StageSpec:
    """The stage spec of a (possibly pruned) torchvision ResNet-50, checking its residual coupling."""
    def fail(msg: str) -> None:
        raise ValueError("inconsistent ResNet-50 widths: " + msg)

    stem = model.conv1.out_channels
    if model.bn1.num_features != stem:
        fail("bn1 has {} features, conv1 has {} outputs".format(model.bn1.num_features, stem))
    stages = []
    in_ch = stem
    for s, layer in enumerate(_layers(model), start=1):
        blocks, out = [], None
        for b, block in enumerate(layer):
            name = "layer{}.{}".format(s, b)
            if block.conv1.in_channels != in_ch:
                fail("{}.conv1 takes {} channels but the previous block gives {}".format(
                    name, block.conv1.in_channels, in_ch))
            if block.conv2.in_channels != block.conv1.out_channels or \
                    block.conv3.in_channels != block.conv2.out_channels:
                fail("{} convolutions do not chain".format(name))
            for conv, bn in ((block.conv1, block.bn1), (block.conv2, block.bn2), (block.conv3, block.bn3)):
                if bn.num_features != conv.out_channels:
                    fail("{} BatchNorm width differs from its convolution".format(name))
            block_out = block.conv3.out_channels
            if block.downsample is not None:
                if block.downsample[0].in_channels != in_ch or block.downsample[0].out_channels != block_out:
                    fail("{}.downsample does not match the residual it is added to".format(name))
            elif block_out != in_ch:
                fail("{} adds a {}-channel identity to a {}-channel output".format(name, in_ch, block_out))
            if out is not None and block_out != out:
                fail("{} outputs {} channels, its stage outputs {}".format(name, block_out, out))
            out = block_out
            blocks.append([block.conv1.out_channels, block.conv2.out_channels])
            in_ch = block_out
        stages.append({"out": out, "blocks": blocks})
    if model.fc.in_features != in_ch:
        fail("fc takes {} features, layer4 gives {}".format(model.fc.in_features, in_ch))
    return {"arch": RESNET50.name, "stem": stem, "stages": stages}


def check_stage_spec(spec: Any) -> StageSpec:
    """Validate a stage spec read from a file; raise EdgekitError on a malformed one."""
    def bad(msg: str) -> EdgekitError:
        return EdgekitError("malformed width spec: " + msg)

    if not isinstance(spec, dict) or spec.get("arch") != RESNET50.name:
        raise bad("expected a mapping with arch 'resnet50'")
    if not isinstance(spec.get("stem"), int) or spec["stem"] < 1:
        raise bad("stem must be a positive integer")
    stages = spec.get("stages")
    if not isinstance(stages, list) or len(stages) != 4:
        raise bad("expected 4 stages")
    for i, (stage, n_blocks) in enumerate(zip(stages, BLOCKS), start=1):
        if not isinstance(stage, dict) or not isinstance(stage.get("out"), int) or stage["out"] < 1:
            raise bad("stage {} needs a positive integer 'out'".format(i))
        blocks = stage.get("blocks")
        if not isinstance(blocks, list) or len(blocks) != n_blocks:
            raise bad("stage {} needs {} blocks".format(i, n_blocks))
        for block in blocks:
            if not (isinstance(block, list) and len(block) == 2
                    and all(isinstance(w, int) and w >= 1 for w in block)):
                raise bad("stage {} blocks must be [conv1, conv2] pairs of positive integers".format(i))
    return spec


def _conv_like(conv: nn.Conv2d, cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                     conv.groups, bias=conv.bias is not None)


def from_stage_spec(spec: StageSpec, num_classes: int) -> nn.Module:
    """A ResNet-50 with the channel counts of a stage spec (weights random; load a state_dict)."""
    spec = check_stage_spec(spec)
    model = torchvision.models.resnet50(weights=None, num_classes=num_classes)
    model.conv1 = _conv_like(model.conv1, 3, spec["stem"])
    model.bn1 = nn.BatchNorm2d(spec["stem"])
    in_ch = spec["stem"]
    for layer, stage in zip(_layers(model), spec["stages"]):
        out = stage["out"]
        for block, (mid1, mid2) in zip(layer, stage["blocks"]):
            block.conv1 = _conv_like(block.conv1, in_ch, mid1)
            block.bn1 = nn.BatchNorm2d(mid1)
            block.conv2 = _conv_like(block.conv2, mid1, mid2)
            block.bn2 = nn.BatchNorm2d(mid2)
            block.conv3 = _conv_like(block.conv3, mid2, out)
            block.bn3 = nn.BatchNorm2d(out)
            if block.downsample is not None:
                block.downsample[0] = _conv_like(block.downsample[0], in_ch, out)
                block.downsample[1] = nn.BatchNorm2d(out)
            in_ch = out
    model.fc = nn.Linear(in_ch, num_classes)
    return model
