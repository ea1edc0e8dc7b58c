"""DF1 / DF2 ("Dongfeng") encoders from Partial Order Pruning (Li et al., CVPR 2019).

Both are plain ResNet-style nets of BasicBlocks found by architecture search for GPU latency.
Layer tables (as in the authors' released ``dfnet`` code, which reproduces the paper's ImageNet
MACs at 224x224: DF1 0.746 G, DF2 1.77 G):

=========  =====================================  =========================================
stride     DF1                                    DF2
=========  =====================================  =========================================
2, 4       stage1: 3x3 conv 32 /2, 3x3 conv 64 /2 (same)
8          stage2: 3 blocks 64 /2                 stage2_1: 2 blocks 64 /2; stage2_2: 1 x 128
16         stage3: 3 blocks 128 /2                stage3_1: 10 blocks 128 /2; stage3_2: 1 x 256
32         stage4: 3 blocks 256 /2;               stage4_1: 4 blocks 256 /2; stage4_2: 2 x 512
           stage5: 1 block 512
=========  =====================================  =========================================

SFNet takes three levels, as the released SFNet-DF code does: DF1 stage3/stage4/stage5
(128/256/512 ch at strides 16/32/32: the last FAM aligns two maps of the same size, and the
prediction is made at 1/16) and DF2 stage2_2/stage3_2/stage4_2 (128/256/512 ch at 8/16/32).
The released decoder on them has fpn_dim 64 (``AlignedDFnetv1/v2``): 8.42M / 17.88M parameters
(the paper's Table 3 says 9.03M / 10.53M; fpn_dim 128 would give DF1 9.24M and 18.5 GMACs at
1024x1024, close to the paper's 9.03M / 18.6, but the released code and checkpoints use 64).
Using the stride-4 stem output as a fourth level would cost 69 GMACs. Attribute names match
the released code (``backbone.stage1.0.weight``...), so its ImageNet files (``df1_imagenet.pth``,
``df2_imagenet.pth``) and SFNet checkpoints load without renaming (``fc.*`` skipped). The
released encoder has no ``fc``; its blocks are torchvision's ``BasicBlock`` layer for layer (``blocks.py``).
"""
from __future__ import annotations

from torch import Tensor, nn

from .backbones import Backbone, init_conv_bn, make_res_stage
from .blocks import BasicBlock

__all__ = ["DFNet", "df1", "df2", "DF1_STAGES", "DF2_STAGES"]

# (attribute name, width, blocks, stride, is a level output)
DF1_STAGES = (
    ("stage2", 64, 3, 2, False),
    ("stage3", 128, 3, 2, True),
    ("stage4", 256, 3, 2, True),
    ("stage5", 512, 1, 1, True),
)
DF2_STAGES = (
    ("stage2_1", 64, 2, 2, False),
    ("stage2_2", 128, 1, 1, True),
    ("stage3_1", 128, 10, 2, False),
    ("stage3_2", 256, 1, 1, True),
    ("stage4_1", 256, 4, 2, False),
    ("stage4_2", 512, 2, 1, True),
)


class DFNet(Backbone):
    """A DF encoder built from a stage table; returns the outputs of the marked stages.

    Shapes: ``(N, 3, H, W)`` -> ``[(N, c, ~H/s, ~W/s) for c, s in zip(out_channels,
    out_strides)]`` (sizes rounded up by the strided convs).
    """

    pretrained_ignore: tuple[str, ...] = ("fc.",)

    def __init__(self, stages: tuple[tuple[str, int, int, int, bool], ...]) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        self._order: list[str] = []
        self._outputs: set[str] = set()
        inplanes, stride = 64, 4
        channels: list[int] = []
        strides: list[int] = []
        for name, width, blocks, s, is_output in stages:
            self.add_module(name, make_res_stage(BasicBlock, inplanes, width, blocks, s))
            self._order.append(name)
            inplanes, stride = width, stride * s
            if is_output:
                self._outputs.add(name)
                channels.append(width)
                strides.append(stride)
        self.out_channels = tuple(channels)
        self.out_strides = tuple(strides)
        init_conv_bn(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stage1(x)
        feats = []
        for name in self._order:
            x = getattr(self, name)(x)
            if name in self._outputs:
                feats.append(x)
        return feats


def df1() -> DFNet:
    """DF1 encoder, out_channels (128, 256, 512) at strides (16, 32, 32)."""
    return DFNet(DF1_STAGES)


def df2() -> DFNet:
    """DF2 encoder, out_channels (128, 256, 512) at strides (8, 16, 32)."""
    return DFNet(DF2_STAGES)
