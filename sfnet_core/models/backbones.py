"""Encoders for SFNet: ResNet with the deep stem and ShuffleNetV2 (DF1/DF2 live in dfnet.py).

Every backbone here is an ``nn.Module`` whose ``forward(x)`` maps ``(N, 3, H, W)`` to a list of
feature maps ordered finest first, and which carries:

* ``out_channels``: channels of each returned map (same order);
* ``out_strides``: nominal stride of each map w.r.t. the input (actual sizes follow the convs'
  ``floor`` arithmetic, so odd inputs give e.g. 11x16 rather than 10.03x15.03 at stride 32);
* ``pretrained_ignore``: state-dict key prefixes of an ImageNet file that belong to the
  classifier: left over when loading (``pretrained.load_backbone_weights`` names every key it
  did not use, at INFO level for these, as a warning for anything else).

Parameter names follow torchvision (``conv1``, ``bn1``, ``layer1``...), and for the deep stem the
authors' released ``resnet_d`` layout, so their ImageNet files load without renaming.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .blocks import BasicBlock, Bottleneck, InvertedResidual

__all__ = ["Backbone", "ResNetBackbone", "ShuffleNetV2Backbone", "resnet18", "resnet50", "resnet101",
           "shufflenet_v2", "make_res_stage", "init_conv_bn"]

class Backbone(nn.Module):
    """What SFNet's decoders read of an encoder (see the module docstring); set in ``__init__``."""

    out_channels: tuple[int, ...]
    out_strides: tuple[int, ...]
    pretrained_ignore: tuple[str, ...] = ("fc.",)


def init_conv_bn(module: nn.Module) -> None:
    """He-normal (fan_out) convolutions and unit/zero BatchNorm, torchvision's ResNet init."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def make_res_stage(block: type[BasicBlock] | type[Bottleneck], inplanes: int, planes: int, blocks: int,
                   stride: int) -> nn.Sequential:
    """``blocks`` residual blocks; the first one strides and, if the shape changes, projects.

    The projection is a 1x1 strided conv + BN, named ``downsample`` like torchvision's.
    """
    out = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != out:
        downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False),
                                   nn.BatchNorm2d(out))
    layers = [block(inplanes, planes, stride, downsample)]
    layers += [block(out, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def _dilate_conv2(stage: nn.Sequential, rate: int) -> None:
    # The released SFNet code dilates the 3x3 ``conv2`` of every block of the last two stages
    # after construction. With padding == dilation a 3x3 conv keeps its output size (strided
    # or not), so the network stays at output stride 32 and costs the same MACs; only the
    # receptive field grows. Edited in place, as the released code does: the blocks keep
    # torchvision's constructor (whose BasicBlock refuses ``dilation > 1``).
    for block in stage:
        conv = block.conv2
        assert isinstance(conv, nn.Conv2d)
        conv.dilation = (rate, rate)
        conv.padding = (rate, rate)


class ResNetBackbone(Backbone):
    """ResNet encoder at output stride 32 returning C2..C5 (strides 4, 8, 16, 32).

    Args:
        block: ``BasicBlock`` or ``Bottleneck`` (``blocks.py``: torchvision's, defined here).
        layers: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        stem: ``"deep"``: three 3x3 convs (3->64 stride 2, 64->64, 64->128) then max-pool, as in
            the authors' code (ResNet-D style; layer1 then starts with a 128->64*expansion
            projection); ``"torchvision"``: the plain 7x7/2 conv, so torchvision's ImageNet
            state dicts load as they are.
        dilate_last_stages: dilate ``conv2`` of each block in layer3/layer4 by 2/4 (released
            code's default); the resolution is unchanged.

    Shapes: ``(N, 3, H, W)`` -> ``[(N, c, ~H/s, ~W/s) for c, s in zip(out_channels, out_strides)]``.
    """

    pretrained_ignore: tuple[str, ...] = ("fc.",)

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int],
                 stem: str = "deep", dilate_last_stages: bool = True) -> None:
        super().__init__()
        self.conv1: nn.Module
        if stem == "deep":
            # Indices 0, 1, 3, 4, 6 hold parameters, as in the released resnet_d files; the
            # third conv's BN is ``bn1`` below.
            self.conv1 = nn.Sequential(
                nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
                nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                nn.Conv2d(64, 128, 3, padding=1, bias=False))
            inplanes = 128
        elif stem == "torchvision":
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
            inplanes = 64
        else:
            raise ValueError(f"stem must be 'deep' or 'torchvision', got {stem!r}")
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        widths = (64, 128, 256, 512)
        stages = []
        for i, (planes, blocks) in enumerate(zip(widths, layers)):
            stages.append(make_res_stage(block, inplanes, planes, blocks, stride=1 if i == 0 else 2))
            inplanes = planes * block.expansion
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        if dilate_last_stages:
            _dilate_conv2(self.layer3, 2)
            _dilate_conv2(self.layer4, 4)
        self.out_channels = tuple(w * block.expansion for w in widths)
        self.out_strides = (4, 8, 16, 32)
        init_conv_bn(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]


def resnet18(stem: str = "deep", dilate_last_stages: bool = True) -> ResNetBackbone:
    """ResNet-18 encoder, out_channels (64, 128, 256, 512)."""
    return ResNetBackbone(BasicBlock, (2, 2, 2, 2), stem, dilate_last_stages)


def resnet50(stem: str = "deep", dilate_last_stages: bool = True) -> ResNetBackbone:
    """ResNet-50 encoder, out_channels (256, 512, 1024, 2048)."""
    return ResNetBackbone(Bottleneck, (3, 4, 6, 3), stem, dilate_last_stages)


def resnet101(stem: str = "deep", dilate_last_stages: bool = True) -> ResNetBackbone:
    """ResNet-101 encoder, out_channels (256, 512, 1024, 2048)."""
    return ResNetBackbone(Bottleneck, (3, 4, 23, 3), stem, dilate_last_stages)


class ShuffleNetV2Backbone(Backbone):
    """ShuffleNetV2 1.0x (torchvision's layout and names) cut into four levels.

    Levels: conv1+max-pool (24 ch, stride 4), stage2 (116, 8), stage3 (232, 16), stage4 (464,
    32); 4, 8 and 4 ``InvertedResidual`` units, the first of each stage strided. torchvision's
    1x1 ``conv5`` (464->1024) and ``fc`` are classifier parts and are not built; their keys are
    skipped when loading an ImageNet state dict. Default PyTorch initialisation, as torchvision's.

    Shapes: ``(N, 3, H, W)`` -> 4 maps as in ``out_channels`` / ``out_strides``.
    """

    pretrained_ignore: tuple[str, ...] = ("fc.", "conv5.")

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 24, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(24),
                                   nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stages = []
        inplanes = 24
        for planes, units in ((116, 4), (232, 8), (464, 4)):
            stages.append(nn.Sequential(InvertedResidual(inplanes, planes, 2),
                                        *(InvertedResidual(planes, planes, 1) for _ in range(units - 1))))
            inplanes = planes
        self.stage2, self.stage3, self.stage4 = stages
        self.out_channels = (24, 116, 232, 464)
        self.out_strides = (4, 8, 16, 32)

    def forward(self, x: Tensor) -> list[Tensor]:
        c2 = self.maxpool(self.conv1(x))
        c3 = self.stage2(c2)
        c4 = self.stage3(c3)
        c5 = self.stage4(c4)
        return [c2, c3, c4, c5]


def shufflenet_v2() -> ShuffleNetV2Backbone:
    """ShuffleNetV2 1.0x encoder, out_channels (24, 116, 232, 464)."""
    return ShuffleNetV2Backbone()
