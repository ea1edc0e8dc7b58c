"""Flow Alignment Module (FAM), SFNet paper section 3.2.

A coarse, semantically strong map ``F_l`` is brought to the grid of a finer map ``F_{l-1}`` by
*warping* instead of plain bilinear upsampling: both maps are squeezed to C/2 channels by 1x1
convs, the squeezed coarse one is bilinearly upsampled, and a 3x3 conv on their concatenation
predicts a 2-channel "semantic flow" on the fine grid. The ORIGINAL coarse map is then sampled
(bilinearly, ``grid_sample``) at the fine grid's positions shifted by that flow.

Flow units. As in the authors' released code, the raw conv output ``f`` is added to the
identity grid ``linspace(-1, 1)`` (both axes) as ``f / (W_out, H_out)``, whatever
``align_corners`` is. With ``align_corners=True`` a raw value ``f`` moves a sample by
``f * (W_out - 1) / (2 * W_out)`` pixels of the fine grid (about f/2, the halving of the paper's
eq. 2); with ``align_corners=False`` by exactly ``f / 2``. ``flow_to_pixels`` converts to that
pixel displacement.

``align_corners`` of the ``grid_sample`` call (the only place it matters; every other resize of
the decoder uses ``align_corners=True`` in the released code too). The released code called
``grid_sample`` with the default (``False`` since PyTorch 1.3) from its first commit (2020-10)
until 2022-07, then with ``True``; the published checkpoints date from 2020-11 and 2021-03, so
which of the two they were trained with is not recorded anywhere. It is a model option
(``fam_align_corners``, default ``True``, stored in checkpoints; see docs/model.md). With a zero
flow and ``align_corners=True`` the module equals (up to float rounding)
``F.interpolate(F_l, size, mode="bilinear", align_corners=True)``; with ``False`` the identity
grid's corner points fall on the coarse map's outer pixel *edges*, a slight zoom.

Everything is built from tensor shapes with torch ops so ONNX export keeps dynamic sizes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FlowAlignmentModule", "flow_warp", "base_grid", "flow_to_pixels"]


def _corner_aligned_coords(n: int, device: torch.device) -> Tensor:
    # torch.linspace(-1, 1, n) from tensor ops only: linspace pins symbolic sizes to constants
    # under torch.export, and the legacy ONNX tracer hands sizes over as tensors. Clamping the
    # last index keeps n == 1 at [-1] like linspace.
    idx = torch.arange(n, dtype=torch.float32, device=device)
    return idx * (2.0 / idx[-1:].clamp(min=1.0)) - 1.0


def base_grid(height: int, width: int, device: torch.device) -> Tensor:
    """Identity sampling grid ``(1, height, width, 2)``, float32 (x then y, in [-1, 1], corners
    aligned, i.e. ``torch.linspace(-1, 1, n)`` along each axis)."""
    ys = _corner_aligned_coords(height, device)
    xs = _corner_aligned_coords(width, device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), dim=-1).unsqueeze(0)


def flow_warp(feature: Tensor, flow: Tensor, align_corners: bool = True) -> Tensor:
    """Sample ``feature`` (N, C, h, w) on the grid of ``flow`` (N, 2, H, W) -> (N, C, H, W).

    ``flow`` is the raw FAM output (released-code normalisation, see module docstring);
    ``align_corners`` is passed to ``grid_sample`` (the identity grid is the same for both).
    Sampling runs in float32 whatever the input dtype: in bf16 (8-bit mantissa) grid
    coordinates near 1.0 are only 1/128 apart, a whole pixel on a 256-wide map.
    """
    out_h, out_w = flow.shape[-2], flow.shape[-1]
    flow = flow.float()
    shift = torch.stack((flow[:, 0] / out_w, flow[:, 1] / out_h), dim=-1)  # (N, H, W, 2)
    grid = base_grid(out_h, out_w, flow.device) + shift
    out = F.grid_sample(feature.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners)
    return out.to(feature.dtype)


def flow_to_pixels(flow: Tensor, align_corners: bool = True) -> Tensor:
    """Raw FAM flow (N, 2, H, W) -> displacement in pixels of that H x W grid (x then y).

    ``align_corners`` must be the one the flow was sampled with (see the module docstring).
    """
    if not align_corners:  # normalised units span W pixel widths: 2/W per pixel
        return flow * 0.5
    h, w = flow.shape[-2], flow.shape[-1]
    sx = (w - 1) / (2.0 * w)
    sy = (h - 1) / (2.0 * h)
    return torch.stack((flow[:, 0] * sx, flow[:, 1] * sy), dim=1)


class FlowAlignmentModule(nn.Module):
    """Align a coarse map to a fine one with a learned semantic flow.

    Args:
        channels: C, the channels of both inputs (the FPN width).
        kernel_size: of the flow conv (3 in the paper; Table 2(b) ablates 1..7).
        align_corners: of the warping ``grid_sample`` (see the module docstring).

    Layout as in the released ``AlignedModule``: ``down_h`` / ``down_l`` 1x1 convs without bias
    (C -> C/2), ``flow_make`` a bias-free conv C -> 2 on ``cat(upsampled down_h(high),
    down_l(low))`` (that order), and the ORIGINAL ``high`` is the warped tensor.

    ``forward(low, high)``: ``low`` (N, C, H, W) fine, ``high`` (N, C, h, w) coarse ->
    ``(warped (N, C, H, W), flow (N, 2, H, W))``, flow raw (see ``flow_to_pixels``).
    """

    def __init__(self, channels: int, kernel_size: int = 3, align_corners: bool = True) -> None:
        super().__init__()
        self.align_corners = align_corners
        half = channels // 2
        self.down_h = nn.Conv2d(channels, half, 1, bias=False)
        self.down_l = nn.Conv2d(channels, half, 1, bias=False)
        # The released code pads the flow conv by 1 whatever its kernel; "same" padding is equal
        # for the released 3x3 and keeps the grid for the ablation's other sizes.
        self.flow_make = nn.Conv2d(2 * half, 2, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, low: Tensor, high: Tensor) -> tuple[Tensor, Tensor]:
        size = low.shape[-2:]
        high_up = F.interpolate(self.down_h(high), size=size, mode="bilinear", align_corners=True)
        flow = self.flow_make(torch.cat((high_up, self.down_l(low)), dim=1))
        return flow_warp(high, flow, self.align_corners), flow
