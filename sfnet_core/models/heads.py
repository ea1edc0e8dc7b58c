"""SFNet decoder parts: PPM, the aligned FPN decoder (paper section 3.3), FCN and aux heads."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .flow_alignment import FlowAlignmentModule

__all__ = ["conv_bn_relu", "adaptive_avg_pool2d", "PyramidPoolingModule", "AlignedFPNDecoder",
           "FCNDecoder", "AuxHead"]


def conv_bn_relu(in_ch: int, out_ch: int, kernel_size: int) -> nn.Sequential:
    """Conv (no bias, 'same' padding) -> BatchNorm -> ReLU."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def _pool_matrix(length: int, bins: int, like: Tensor) -> Tensor:
    # Row i averages positions [floor(i*L/b), ceil((i+1)*L/b)), PyTorch's adaptive-pool windows.
    idx = torch.arange(bins, device=like.device)
    start = (idx * length) // bins
    end = ((idx + 1) * length + bins - 1) // bins
    pos = torch.arange(length, device=like.device)
    mask = ((pos[None, :] >= start[:, None]) & (pos[None, :] < end[:, None])).to(like.dtype)
    return mask / mask.sum(dim=1, keepdim=True)


def adaptive_avg_pool2d(x: Tensor, bins: int) -> Tensor:
    """``F.adaptive_avg_pool2d(x, bins)`` as two matmuls: (N, C, H, W) -> (N, C, bins, bins).

    ONNX exporters only handle adaptive pooling when the output size divides the input size;
    this form exports for any (dynamic) H, W and costs next to nothing.
    """
    if bins == 1:
        return x.mean(dim=(2, 3), keepdim=True)
    ph = _pool_matrix(x.shape[-2], bins, x)  # (b, H)
    pw = _pool_matrix(x.shape[-1], bins, x)  # (b, W)
    return torch.matmul(torch.matmul(ph, x), pw.transpose(0, 1))


class PyramidPoolingModule(nn.Module):
    """PPM (Zhao et al., PSPNet) on the last stage, output at the input's resolution.

    As the released SFNet code (``PSPModule``): each bin b: average-pool to b x b, 1x1 conv (no
    bias) + BN to ``out_ch`` with NO ReLU (PSPNet's branches have one; ``branch_relu=True``
    adds it back, which is how this project's models trained before the fix to issue #10 ran),
    bilinear back up (``align_corners=True``); the four priors then the input are concatenated
    and fused by a 1x1 conv-BN-ReLU + dropout 0.1. The fusing conv is 1x1 as in the released
    code (a 3x3 one, as in PSPNet, would add 1.05M parameters to SFNet-R18 and miss the
    paper's 12.87M).

    Shapes: (N, in_ch, h, w) -> (N, out_ch, h, w).
    """

    def __init__(self, in_ch: int, out_ch: int, bins: Sequence[int] = (1, 2, 3, 6),
                 branch_relu: bool = False) -> None:
        super().__init__()
        self.bins = tuple(bins)
        # Sequential(conv, BN[, ReLU]): parameter names are the same with or without the ReLU.
        self.stages = nn.ModuleList(
            conv_bn_relu(in_ch, out_ch, 1) if branch_relu else
            nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch))
            for _ in self.bins)
        self.bottleneck = nn.Sequential(*conv_bn_relu(in_ch + len(self.bins) * out_ch, out_ch, 1),
                                        nn.Dropout2d(0.1))

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        priors = [_resize(stage(adaptive_avg_pool2d(x, b)), size) for b, stage in zip(self.bins, self.stages)]
        return self.bottleneck(torch.cat(priors + [x], dim=1))


class AlignedFPNDecoder(nn.Module):
    """FPN decoder whose top-down upsampling is done by FAMs (or bilinear for the FPN baseline).

    Args:
        in_channels: backbone channels C2..C5, finest first.
        fpn_dim: decoder width.
        num_classes: classifier outputs.
        upsample: ``"fam"`` (SFNet) or ``"bilinear"`` (the paper's FPN+PPM baseline) for the
            top-down pathway.
        fuse: how P3..P5 are brought to P2's grid before concatenation: ``"bilinear"`` (the
            released code) or ``"fam"`` (as the paper's text describes; adds one FAM per level).
        flow_kernel_size: kernel of every FAM's flow conv.
        fam_align_corners: ``align_corners`` of every FAM's ``grid_sample`` (see
            ``flow_alignment``).
        ppm_relu: ReLU on the PPM branches (``PyramidPoolingModule.branch_relu``).

    Layer for layer the released ``UperNetAlignHead``: PPM; per level a lateral 1x1
    conv-BN-ReLU (the released one has a conv bias, which BN makes redundant: importing folds
    it into the BN's running mean, exactly), the FAM, ``lateral + warped``, a 3x3 conv-BN-ReLU;
    P3..P5 (P5 = the PPM output, not smoothed) bilinearly resized (``align_corners=True``) to
    P2's grid, concatenated finest first, 3x3 conv-BN-ReLU and a 1x1 classifier with bias.

    ``forward(feats)`` with ``feats`` = [C2..C5] returns ``(logits, sums, flows)``: logits
    (N, num_classes, H2, W2) on C2's grid; ``sums`` the top-down sums lateral + aligned
    (N, fpn_dim, Hl, Wl), coarse to fine (inputs of the deep-supervision heads); ``flows`` the
    raw flows (N, 2, Hl, Wl) of every FAM, top-down ones coarse to fine, then the fuse ones.
    """

    def __init__(self, in_channels: Sequence[int], fpn_dim: int, num_classes: int,
                 upsample: str = "fam", fuse: str = "bilinear", flow_kernel_size: int = 3,
                 fam_align_corners: bool = True, ppm_relu: bool = False) -> None:
        super().__init__()
        levels = len(in_channels)
        self.fam_align_corners = fam_align_corners
        self.ppm = PyramidPoolingModule(in_channels[-1], fpn_dim, branch_relu=ppm_relu)
        self.lateral = nn.ModuleList(conv_bn_relu(c, fpn_dim, 1) for c in in_channels[:-1])
        self.align = nn.ModuleList(FlowAlignmentModule(fpn_dim, flow_kernel_size, fam_align_corners)
                                   for _ in range(levels - 1) if upsample == "fam")
        self.smooth = nn.ModuleList(conv_bn_relu(fpn_dim, fpn_dim, 3) for _ in range(levels - 1))
        self.fuse_align = nn.ModuleList(FlowAlignmentModule(fpn_dim, flow_kernel_size, fam_align_corners)
                                        for _ in range(levels - 1) if fuse == "fam")
        self.fuse = conv_bn_relu(levels * fpn_dim, fpn_dim, 3)
        self.classifier = nn.Conv2d(fpn_dim, num_classes, 1)

    def forward(self, feats: Sequence[Tensor]) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        top = self.ppm(feats[-1])
        pyramid = [top]  # coarse to fine
        sums: list[Tensor] = []
        flows: list[Tensor] = []
        for i in reversed(range(len(feats) - 1)):
            lateral = self.lateral[i](feats[i])
            if len(self.align):
                top, flow = self.align[i](lateral, top)
                flows.append(flow)
            else:
                top = _resize(top, lateral.shape[-2:])
            top = lateral + top
            sums.append(top)
            pyramid.append(self.smooth[i](top))
        finest = pyramid[-1]
        fused = [finest]
        for j, level in enumerate(pyramid[-2::-1]):  # next-to-finest up to PPM output
            if len(self.fuse_align):
                level, flow = self.fuse_align[j](finest, level)
                flows.append(flow)
            else:
                level = _resize(level, finest.shape[-2:])
            fused.append(level)
        return self.classifier(self.fuse(torch.cat(fused, dim=1))), sums, flows


class FCNDecoder(nn.Module):
    """Naive FCN-32s head (paper Table 1(a) baseline): 3x3 conv-BN-ReLU (in/4), dropout, 1x1.

    ``forward(feats)`` -> ``(logits (N, K, H5, W5), [C4] for the aux head, [])``.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int) -> None:
        super().__init__()
        mid = in_channels[-1] // 4
        self.head = nn.Sequential(*conv_bn_relu(in_channels[-1], mid, 3), nn.Dropout2d(0.1),
                                  nn.Conv2d(mid, num_classes, 1))

    def forward(self, feats: Sequence[Tensor]) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        return self.head(feats[-1]), [feats[-2]], []


class AuxHead(nn.Module):
    """Deep-supervision head: 3x3 conv-BN-ReLU, dropout 0.1, 1x1 classifier. (N, C, h, w) -> (N, K, h, w).

    The released ``head.dsn.i`` (same layer indices); its 3x3 conv's bias is folded into the BN
    on import, as for the laterals.
    """

    def __init__(self, in_ch: int, mid_ch: int, num_classes: int) -> None:
        super().__init__()
        self.head = nn.Sequential(*conv_bn_relu(in_ch, mid_ch, 3), nn.Dropout2d(0.1),
                                  nn.Conv2d(mid_ch, num_classes, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(x)
