"""The encoders' building blocks, with torchvision's parameter names and arithmetic.

torchvision's ResNet ``BasicBlock`` and ``Bottleneck`` and ShuffleNetV2 ``InvertedResidual`` are
the reference (``test/test_models.py`` loads one's state dict into the other and compares
outputs); they are defined here because importing anything from torchvision 0.29 imports
``torch._dynamo`` (its ``ops`` package does, eagerly): about 2 s of every process start on the
project's 2-core machine (``sfnet-export`` of a small model, interleaved quiet runs: 8.2-9.8 s
with torchvision's blocks, 6.2-6.7 s with these), paid by every tool and node that builds a model.

Names follow torchvision (``conv1``, ``bn1``, ``conv2``, ``bn2``, [``conv3``, ``bn3``],
``downsample``; ``branch1``, ``branch2``), so the authors' ``resnet_d`` files and torchvision's
ImageNet files load as they are. ``Bottleneck`` strides in its 3x3 ``conv2`` (ResNet v1.5), as
torchvision's does.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["BasicBlock", "Bottleneck", "InvertedResidual", "channel_shuffle", "conv3x3"]


def conv3x3(inplanes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution without bias whose padding keeps the size (up to ``stride``)."""
    return nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs and the identity (or ``downsample``) added before the last ReLU.

    Shapes: ``(N, inplanes, H, W)`` -> ``(N, planes, ~H/stride, ~W/stride)``.
    """

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity  # in place, as torchvision: no extra feature map per block
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand to ``planes * 4``; identity added before the ReLU.

    Shapes: ``(N, inplanes, H, W)`` -> ``(N, 4 * planes, ~H/stride, ~W/stride)``.
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of ``groups`` equal groups: ``(N, C, H, W)`` -> same shape."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _conv_bn(inplanes: int, planes: int, kernel: int, stride: int = 1, depthwise: bool = False) -> list[nn.Module]:
    conv = nn.Conv2d(inplanes, planes, kernel, stride=stride, padding=kernel // 2, bias=False,
                     groups=inplanes if depthwise else 1)
    return [conv, nn.BatchNorm2d(planes)]


class InvertedResidual(nn.Module):
    """ShuffleNetV2's unit (Ma et al., 2018): half the channels through 1x1 -> depthwise 3x3 ->
    1x1 (``branch2``), the other half kept (stride 1) or through depthwise 3x3 -> 1x1
    (``branch1``, stride 2), concatenated and channel-shuffled.

    Shapes: ``(N, inplanes, H, W)`` -> ``(N, planes, ~H/stride, ~W/stride)``; with stride 1,
    ``inplanes == planes``.
    """

    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        half = planes // 2
        if stride == 1 and inplanes != 2 * half:
            raise ValueError(f"a stride-1 unit keeps its width: got {inplanes} -> {planes}")
        self.stride = stride
        self.branch1 = nn.Sequential(
            *_conv_bn(inplanes, inplanes, 3, stride, depthwise=True), *_conv_bn(inplanes, half, 1),
            nn.ReLU(inplace=True)) if stride > 1 else nn.Sequential()
        self.branch2 = nn.Sequential(
            *_conv_bn(inplanes if stride > 1 else half, half, 1), nn.ReLU(inplace=True),
            *_conv_bn(half, half, 3, stride, depthwise=True), *_conv_bn(half, half, 1), nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            kept, x = x.chunk(2, dim=1)
            out = torch.cat((kept, self.branch2(x)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)
