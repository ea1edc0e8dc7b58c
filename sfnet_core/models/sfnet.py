"""SFNet model, its variants and ``build_model``.

Fidelity to the released code (SFSegNets, ``network/sfnet_resnet.py``, ``sfnet_dfnet.py``,
``nn/operators.py``): for SFNet-R18/R50/R101/DF1/DF2, with or without the deep-supervision
heads, the network computes the released network's function, layer for layer; a released
checkpoint imported with ``sfnet-import`` (``released.py``) gives the released code's logits
(docs/model.md). The only structural difference: the released lateral 1x1 convs and dsn 3x3
convs carry a bias that the BatchNorm right after makes redundant; they are built without
(import folds the bias into the BN's running mean, which is exact).

Parameter counts (19 classes, inference network, aux heads excluded)
--------------------------------------------------------------------
=================  ===========  ===================  ==========
model              this code    released code        paper
=================  ===========  ===================  ==========
SFNet-R18          12,869,331   12,869,715           12.87M
SFNet-R50          31,324,371   31,325,139           -
SFNet-R101         50,316,499   50,317,267           50.32M
SFNet-DF1           8,422,259    8,422,387            9.03M
SFNet-DF2          17,876,339   17,876,467           10.53M
=================  ===========  ===================  ==========

The released counts are this code's plus the lateral biases (3 x fpn_dim for ResNets, 2 x 64
for DF). What the paper counted for R18/R101 is the released configuration:

* deep-stem ResNet *including* layer1's 128->64*expansion projection (1x1 conv + BN) that the
  deep stem's 128 output channels force, and no ``fc``;
* PPM with bins (1, 2, 3, 6), branch width = fpn_dim, and a **1x1** fusing conv (a 3x3 one
  would give 13.92M / 56.61M);
* fpn_dim 128 (R18) / 256 (R50, R101) / 64 (DF1, DF2), three FAMs (two for DF), fuse by
  bilinear upsampling;
* **without** the deep-supervision heads (``aux=True`` adds 0.45M on R18, 1.79M on R101:
  they are training-only and dropped at inference, so the paper counts the inference net).
  BN parameters (weight, bias) are counted; buffers are not.

The DF rows follow the released code (fpn_dim 64), not the paper's table: the DF2 encoder alone
has 17.47M parameters (its layer table is pinned down by the DF paper's 1.77 GMACs at 224x224,
which it reproduces), so no decoder on it reaches 10.53M; with fpn_dim 64, DF1 has 8.42M
against the paper's 9.03M. The paper gives no count for ShuffleNetV2 (not in the released code).

MACs. The paper's "GFLOPs" are multiply-accumulates (2 FLOPs per MAC would make SFNet-R18
243 G): at 1024x1024 this code gives 121.5 GMACs for SFNet-R18 (paper 123.5), 331.7 / 409.3
for R50 / R101 (337.1 / 417.5), counting convolutions and matmuls only. ShuffleNetV2 uses
fpn_dim 64: with 128 the model would cost 55.8 G, 3x the paper's 18.1; with 64 it has 16.1 G
and FAMs add 0.32 G (paper: 17.8 -> 18.1). ``bench/model_stats.py`` prints the whole table.

Training-only difference: the decoder's convs get He-normal initialisation here, PyTorch's
default in the released code (no effect on imported weights).
"""
from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from . import backbones, dfnet
from .backbones import Backbone, init_conv_bn
from .flow_alignment import flow_to_pixels
from .heads import AlignedFPNDecoder, AuxHead, FCNDecoder
from .pretrained import load_backbone_weights

__all__ = ["SFNet", "MODEL_VARIANTS", "build_model"]


class SFNet(nn.Module):
    """Encoder + decoder + optional deep-supervision heads.

    ``forward(x, return_flows=False)`` with ``x`` (N, 3, H, W), any H, W:

    * eval: logits (N, K, H, W); with ``return_flows``: ``(logits, flows)``;
    * train: ``(logits, aux_logits)``, ``aux_logits`` a list of (N, K, H, W), one per decoder
      level coarse to fine (empty without aux heads); with ``return_flows``:
      ``(logits, aux_logits, flows)``.

    ``flows``: one (N, 2, h, w) tensor per FAM, coarse to fine (then the fuse FAMs, if any),
    as pixel displacements (x then y) on the grid each flow was predicted on. Empty for the
    FPN/FCN baselines. Attribute ``aux_heads`` holds the training-only parameters (state-dict
    prefix ``aux_heads.``).
    """

    # Set by ``build_model``: the variant table's name and the options it was built with.
    variant: str
    options: dict[str, Any]

    def __init__(self, backbone: Backbone, decoder: nn.Module, num_classes: int,
                 aux_heads: Sequence[nn.Module] = ()) -> None:
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder
        self.aux_heads = nn.ModuleList(aux_heads)
        self.num_classes = num_classes

    def forward(self, x: Tensor, return_flows: bool = False) -> Any:
        size = x.shape[-2:]
        logits, sums, flows = self.decoder(self.backbone(x))
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=True)
        outputs: tuple[Any, ...] = (logits,)
        if self.training:
            outputs += ([F.interpolate(head(f), size=size, mode="bilinear", align_corners=True)
                         for head, f in zip(self.aux_heads, sums)],)
        if return_flows:
            align_corners = getattr(self.decoder, "fam_align_corners", True)
            outputs += ([flow_to_pixels(f, align_corners) for f in flows],)
        return outputs[0] if len(outputs) == 1 else outputs


# ---------------------------------------------------------------------------- option checks

def _choice(key: str, value: Any, choices: Sequence[Any]) -> Any:
    if value not in choices or isinstance(value, bool) != isinstance(choices[0], bool):
        allowed = ", ".join(map(repr, choices))
        raise ConfigError(f"model option {key!r}: expected one of {allowed}, got {value!r}")
    return value


def _int(key: str, value: Any, minimum: int, even: bool = False, odd: bool = False) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    if ok and even and value % 2:
        ok = False
    if ok and odd and not value % 2:
        ok = False
    if not ok:
        kind = "an even integer" if even else "an odd integer" if odd else "an integer"
        raise ConfigError(f"model option {key!r}: expected {kind} >= {minimum}, got {value!r}")
    return value


def _sfnet(backbone: Backbone, num_classes: int, aux: bool, fpn_dim: int, upsample: str,
           fuse: str, flow_kernel_size: int, fam_align_corners: bool = True,
           ppm_relu: bool = False) -> SFNet:
    _int("fpn_dim", fpn_dim, 2, even=True)
    _choice("upsample", upsample, ("fam", "bilinear"))
    _choice("fuse", fuse, ("bilinear", "fam"))
    _int("flow_kernel_size", flow_kernel_size, 1, odd=True)
    _choice("fam_align_corners", fam_align_corners, (True, False))
    _choice("ppm_relu", ppm_relu, (False, True))
    channels = backbone.out_channels
    decoder = AlignedFPNDecoder(channels, fpn_dim, num_classes, upsample, fuse, flow_kernel_size,
                                fam_align_corners, ppm_relu)
    heads = [AuxHead(fpn_dim, fpn_dim, num_classes) for _ in channels[:-1]] if aux else []
    model = SFNet(backbone, decoder, num_classes, heads)
    init_conv_bn(model.decoder)
    init_conv_bn(model.aux_heads)
    # FAM convs keep PyTorch's default init, as in the released code: He-normal with fan_out
    # on the 2-output flow conv would draw weights of std 0.33 and start training with flows
    # of many pixels; the default keeps initial flows well under a pixel.
    for fam in (*decoder.align, *decoder.fuse_align):
        for conv in (fam.down_h, fam.down_l, fam.flow_make):
            conv.reset_parameters()
    return model


def _resnet(factory: Callable[..., Backbone], stem: str, dilate_last_stages: bool) -> Backbone:
    _choice("stem", stem, ("deep", "torchvision"))
    _choice("dilate_last_stages", dilate_last_stages, (True, False))
    return factory(stem=stem, dilate_last_stages=dilate_last_stages)


# ---------------------------------------------------------------------------- variants
# Each builder: (num_classes, aux, *, options) -> SFNet. Keyword-only parameters are the
# options ``build_model`` accepts for that variant. Options common to the FAM decoders:
# ``fam_align_corners`` (``grid_sample`` of the FAMs; the released code's HEAD uses True, its
# 2020-2022 versions False, see flow_alignment.py) and ``ppm_relu`` (False as the released code;
# True reproduces this project's models trained before issue #10). A checkpoint that lacks an
# option gets its default here.

def sfnet_resnet18(num_classes: int, aux: bool = False, *, stem: str = "deep",
                   dilate_last_stages: bool = True, fpn_dim: int = 128, upsample: str = "fam",
                   fuse: str = "bilinear", flow_kernel_size: int = 3, fam_align_corners: bool = True,
                   ppm_relu: bool = False) -> SFNet:
    """SFNet on ResNet-18 (deep stem): 12.87M parameters, the paper's real-time model."""
    backbone = _resnet(backbones.resnet18, stem, dilate_last_stages)
    return _sfnet(backbone, num_classes, aux, fpn_dim, upsample, fuse, flow_kernel_size,
                  fam_align_corners, ppm_relu)


def sfnet_resnet50(num_classes: int, aux: bool = False, *, stem: str = "deep",
                   dilate_last_stages: bool = True, fpn_dim: int = 256, upsample: str = "fam",
                   fuse: str = "bilinear", flow_kernel_size: int = 3, fam_align_corners: bool = True,
                   ppm_relu: bool = False) -> SFNet:
    """SFNet on ResNet-50 (deep stem), fpn_dim 256 (paper Table 1(d), released code)."""
    backbone = _resnet(backbones.resnet50, stem, dilate_last_stages)
    return _sfnet(backbone, num_classes, aux, fpn_dim, upsample, fuse, flow_kernel_size,
                  fam_align_corners, ppm_relu)


def sfnet_resnet101(num_classes: int, aux: bool = False, *, stem: str = "deep",
                    dilate_last_stages: bool = True, fpn_dim: int = 256, upsample: str = "fam",
                    fuse: str = "bilinear", flow_kernel_size: int = 3, fam_align_corners: bool = True,
                    ppm_relu: bool = False) -> SFNet:
    """SFNet on ResNet-101 (deep stem): 50.32M parameters (paper Table 4)."""
    backbone = _resnet(backbones.resnet101, stem, dilate_last_stages)
    return _sfnet(backbone, num_classes, aux, fpn_dim, upsample, fuse, flow_kernel_size,
                  fam_align_corners, ppm_relu)


def sfnet_shufflenetv2(num_classes: int, aux: bool = False, *, fpn_dim: int = 64, upsample: str = "fam",
                       fuse: str = "bilinear", flow_kernel_size: int = 3, fam_align_corners: bool = True,
                       ppm_relu: bool = False) -> SFNet:
    """SFNet on torchvision's ShuffleNetV2 1.0x (paper Table 1(d)); fpn_dim 64 (see module doc).
    Not in the released code."""
    return _sfnet(backbones.shufflenet_v2(), num_classes, aux, fpn_dim, upsample, fuse, flow_kernel_size,
                  fam_align_corners, ppm_relu)


def sfnet_df1(num_classes: int, aux: bool = False, *, fpn_dim: int = 64, upsample: str = "fam",
              fuse: str = "bilinear", flow_kernel_size: int = 3, fam_align_corners: bool = True,
              ppm_relu: bool = False) -> SFNet:
    """SFNet on DF1, three levels at strides 16/32/32, fpn_dim 64 as the released
    ``AlignedDFnetv1`` (8.42M parameters; the paper's Table 3 says 9.03M)."""
    return _sfnet(dfnet.df1(), num_classes, aux, fpn_dim, upsample, fuse, flow_kernel_size,
                  fam_align_corners, ppm_relu)


def sfnet_df2(num_classes: int, aux: bool = False, *, fpn_dim: int = 64, upsample: str = "fam",
              fuse: str = "bilinear", flow_kernel_size: int = 3, fam_align_corners: bool = True,
              ppm_relu: bool = False) -> SFNet:
    """SFNet on DF2, three levels at strides 8/16/32, fpn_dim 64 as the released
    ``AlignedDFnetv2`` (17.88M parameters; the paper's Table 3 says 10.53M, but the DF2
    encoder alone has 17.47M)."""
    return _sfnet(dfnet.df2(), num_classes, aux, fpn_dim, upsample, fuse, flow_kernel_size,
                  fam_align_corners, ppm_relu)


def fpn_resnet18(num_classes: int, aux: bool = False, *, stem: str = "deep",
                 dilate_last_stages: bool = True, fpn_dim: int = 128, ppm_relu: bool = False) -> SFNet:
    """Paper Table 1(a) "FPN + PPM" baseline: SFNet-R18's decoder with bilinear upsampling
    (the released ``UperNetHead``)."""
    backbone = _resnet(backbones.resnet18, stem, dilate_last_stages)
    return _sfnet(backbone, num_classes, aux, fpn_dim, "bilinear", "bilinear", 3, True, ppm_relu)


def fcn_resnet18(num_classes: int, aux: bool = False, *, stem: str = "deep",
                 dilate_last_stages: bool = True) -> SFNet:
    """Paper Table 1(a) naive FCN baseline (stride 32). ``aux`` adds one head on C4."""
    backbone = _resnet(backbones.resnet18, stem, dilate_last_stages)
    channels = backbone.out_channels
    heads = [AuxHead(channels[-2], channels[-2] // 4, num_classes)] if aux else []
    model = SFNet(backbone, FCNDecoder(channels, num_classes), num_classes, heads)
    init_conv_bn(model.decoder)
    init_conv_bn(model.aux_heads)
    return model


MODEL_VARIANTS: dict[str, Callable[..., SFNet]] = {
    "sfnet_resnet18": sfnet_resnet18,
    "sfnet_resnet50": sfnet_resnet50,
    "sfnet_resnet101": sfnet_resnet101,
    "sfnet_shufflenetv2": sfnet_shufflenetv2,
    "sfnet_df1": sfnet_df1,
    "sfnet_df2": sfnet_df2,
    "fpn_resnet18": fpn_resnet18,
    "fcn_resnet18": fcn_resnet18,
}


def variant_options(name: str) -> dict[str, Any]:
    """Option names of a variant with their defaults."""
    params = inspect.signature(MODEL_VARIANTS[name]).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def build_model(name: str, num_classes: int, aux: bool = False,
                pretrained_backbone: str | os.PathLike | None = None, **options: Any) -> SFNet:
    """Build a model of ``MODEL_VARIANTS`` by name.

    Args:
        name: a key of ``MODEL_VARIANTS``.
        num_classes: classifier outputs (>= 1).
        aux: add the deep-supervision heads (used in training mode only).
        pretrained_backbone: local state-dict file for the encoder (never downloaded).
        **options: variant options (see ``variant_options(name)``), e.g. ``stem="torchvision"``,
            ``fuse="fam"``, ``upsample="bilinear"``.

    Raises:
        ConfigError: unknown name, option or option value.
        PretrainedWeightsError: the pretrained file is missing or does not fit.
    """
    if name not in MODEL_VARIANTS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODEL_VARIANTS)}")
    _int("num_classes", num_classes, 1)
    _choice("aux", aux, (True, False))
    allowed = variant_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"model {name!r}: unknown option(s) {', '.join(map(repr, unknown))}; "
                          f"valid options: {', '.join(allowed)}")
    model = MODEL_VARIANTS[name](num_classes, aux, **options)
    if pretrained_backbone is not None:
        load_backbone_weights(model.backbone, pretrained_backbone)
    model.variant = name
    model.options = dict(options)
    return model
