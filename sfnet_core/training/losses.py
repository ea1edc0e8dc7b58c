"""Training losses: cross-entropy with online hard example mining (OHEM) and deep supervision.

SFNet (Sec. 3.3) trains with OHEM "following [53]" and deeply supervised auxiliary heads. The
reference code (torchcv / SFNet's OhemCrossEntropy2dTensor) keeps the pixels whose predicted
probability of the true class is at or below ``thresh`` (0.7), and at least the ``min_kept``
hardest pixels of the batch: the threshold is raised to the ``min_kept``-th smallest
probability when that is higher. If the batch has fewer than ``min_kept`` labelled pixels, all
of them are kept. Auxiliary heads use the same criterion, weighted by ``aux_weight`` (0.4).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sfnet_core.training.config import LossConfig


def _match_size(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # Heads may predict at a lower resolution; compare at the label's resolution.
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return logits


def _masked_mean(pixel_loss: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    # sum / max(count, 1): an all-ignore batch gives 0 (with a graph), never 0/0 = NaN.
    return (pixel_loss * keep).sum() / keep.sum().clamp(min=1)


class OhemCrossEntropy(nn.Module):
    """Cross-entropy over the hard pixels only. ``forward(logits (N,C,H,W), target (N,H,W) int64) -> scalar``."""

    def __init__(self, ignore_index: int = 255, thresh: float = 0.7, min_kept: int = 100000) -> None:
        super().__init__()
        self.ignore_index, self.thresh, self.min_kept = int(ignore_index), float(thresh), int(min_kept)

    @torch.no_grad()
    def kept_mask(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(N, H, W) bool: the pixels OHEM trains on (never an ignore pixel)."""
        valid = target != self.ignore_index
        num_valid = int(valid.sum())
        if num_valid == 0 or self.min_kept >= num_valid:
            return valid
        prob = torch.softmax(logits.float(), dim=1)
        safe_target = torch.where(valid, target, torch.zeros_like(target))
        true_prob = prob.gather(1, safe_target.unsqueeze(1)).squeeze(1)
        threshold = self.thresh
        if self.min_kept > 0:
            kth = torch.kthvalue(true_prob[valid], self.min_kept).values.item()
            threshold = max(threshold, kth)
        return valid & (true_prob <= threshold)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = _match_size(logits, target)
        pixel_loss = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="none")
        return _masked_mean(pixel_loss, self.kept_mask(logits, target))


class CrossEntropy(nn.Module):
    """Plain cross-entropy with an ignore index; 0 (not NaN) when every pixel is ignored."""

    def __init__(self, ignore_index: int = 255) -> None:
        super().__init__()
        self.ignore_index = int(ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = _match_size(logits, target)
        pixel_loss = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="none")
        return _masked_mean(pixel_loss, target != self.ignore_index)


class SegmentationLoss(nn.Module):
    """Main head + ``aux_weight`` x each auxiliary head, all with the same criterion.

    ``loss(main (N,C,H,W), aux [(N,C,h,w), ...], target (N,H,W)) -> (total, {"main", "aux"})``
    where ``aux`` is the weighted auxiliary part, so ``total == main + aux``.
    """

    def __init__(self, cfg: LossConfig | None = None, ignore_index: int = 255) -> None:
        super().__init__()
        self.cfg = cfg or LossConfig()
        self.criterion: nn.Module = (
            OhemCrossEntropy(ignore_index, self.cfg.ohem_thresh, self.cfg.ohem_min_kept)
            if self.cfg.ohem else CrossEntropy(ignore_index)
        )

    def forward(self, main_logits: torch.Tensor, aux_logits: Sequence[torch.Tensor] | None,
                target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        target = target.long()
        main = self.criterion(main_logits, target)
        aux = main.new_zeros(())
        for logits in aux_logits or ():
            aux = aux + self.cfg.aux_weight * self.criterion(logits, target)
        total = main + aux
        return total, {"main": float(main.detach()), "aux": float(aux.detach())}
