"""OHEM cross-entropy and deep supervision, on hand-made logits whose probabilities are known."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sfnet_core.errors import ConfigError
from sfnet_core.training.config import LossConfig
from sfnet_core.training.losses import CrossEntropy, OhemCrossEntropy, SegmentationLoss
from sfnet_core.yaml_config import from_dict

# true-class probabilities of six pixels (class 0 is the truth); the last pixel is ignored
P_TRUE = [0.9, 0.8, 0.6, 0.5, 0.3, 0.01]
IGNORE = 255


def _example() -> tuple[torch.Tensor, torch.Tensor]:
    """logits (1, 2, 1, 6) with softmax(logits)[0] == P_TRUE exactly; target (1, 1, 6)."""
    p = torch.tensor(P_TRUE, dtype=torch.float64)
    logits = torch.stack([p.log(), (1 - p).log()]).view(1, 2, 1, 6)
    target = torch.zeros(1, 1, 6, dtype=torch.long)
    target[..., 5] = IGNORE
    return logits, target


def _nll(indices: list[int]) -> float:
    return sum(-math.log(P_TRUE[i]) for i in indices) / len(indices)


@pytest.mark.parametrize(
    ("min_kept", "kept"),
    [
        (1, [2, 3, 4]),           # threshold 0.7: the pixels at 0.6, 0.5, 0.3
        (0, [2, 3, 4]),
        (4, [1, 2, 3, 4]),        # the 4 hardest reach 0.8 > 0.7: the threshold rises to 0.8
        (5, [0, 1, 2, 3, 4]),     # all 5 labelled pixels
        (50, [0, 1, 2, 3, 4]),    # fewer labelled pixels than min_kept: keep them all
    ],
)
def test_ohem_keeps_exactly_the_hard_pixels(min_kept, kept):
    logits, target = _example()
    ohem = OhemCrossEntropy(IGNORE, thresh=0.7, min_kept=min_kept)
    mask = ohem.kept_mask(logits, target)
    assert mask.view(-1).nonzero().view(-1).tolist() == kept
    assert ohem(logits, target).item() == pytest.approx(_nll(kept), rel=1e-9)


def test_ignore_pixels_never_contribute():
    logits, target = _example()
    logits = logits.clone().requires_grad_(True)
    for criterion in (OhemCrossEntropy(IGNORE, 0.7, 1), OhemCrossEntropy(IGNORE, 0.7, 100), CrossEntropy(IGNORE)):
        loss = criterion(logits, target)
        (grad,) = torch.autograd.grad(loss, logits)
        assert grad[..., 5].abs().max() == 0  # the ignored pixel (the hardest one!) gets no gradient
        moved = logits.detach().clone()
        moved[:, :, :, 5] = torch.tensor([[-30.0], [30.0]])
        assert criterion(moved, target).item() == pytest.approx(loss.item())


def test_plain_cross_entropy_matches_torch():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 4, 5, 6), torch.randint(0, 4, (2, 5, 6))
    target[0, :2] = IGNORE
    expected = F.cross_entropy(logits, target, ignore_index=IGNORE)
    assert CrossEntropy(IGNORE)(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    loss, parts = SegmentationLoss(LossConfig(ohem=False), IGNORE)(logits, [], target)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6) and parts["aux"] == 0.0


@pytest.mark.parametrize("ohem", [True, False])
def test_aux_heads_are_weighted(ohem):
    torch.manual_seed(1)
    target = torch.randint(0, 3, (2, 8, 8))
    main, aux1 = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    aux2 = torch.randn(2, 3, 4, 4)  # a coarser head is upsampled to the label size
    cfg = LossConfig(ohem=ohem, ohem_min_kept=10, aux_weight=0.4)
    loss_fn = SegmentationLoss(cfg, IGNORE)
    base = loss_fn.criterion
    expected_aux = 0.4 * (base(aux1, target) + base(aux2, target))
    total, parts = loss_fn(main, [aux1, aux2], target)
    assert parts["main"] == pytest.approx(base(main, target).item())
    assert parts["aux"] == pytest.approx(expected_aux.item())
    assert total.item() == pytest.approx(parts["main"] + parts["aux"])
    loss = SegmentationLoss(LossConfig(ohem=ohem, ohem_min_kept=10, aux_weight=0.8), IGNORE)
    double, _ = loss(main, [aux1, aux2], target)
    assert double.item() == pytest.approx(parts["main"] + 2 * parts["aux"])
    alone, parts_alone = loss_fn(main, [], target)
    assert alone.item() == pytest.approx(parts["main"]) and parts_alone["aux"] == 0.0


@pytest.mark.parametrize("ohem", [True, False])
def test_all_ignore_batch_gives_zero_not_nan(ohem):
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), IGNORE, dtype=torch.long)
    total, parts = SegmentationLoss(LossConfig(ohem=ohem), IGNORE)(logits, [logits * 2], target)
    assert torch.isfinite(total) and total.item() == 0.0 and parts == {"main": 0.0, "aux": 0.0}
    total.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_loss_config_validation():
    assert LossConfig() == LossConfig(True, 0.7, 100000, 0.4)
    with pytest.raises(ConfigError, match=r"r\.yaml: ohem_thresh: must be in \(0, 1\]"):
        from_dict(LossConfig, {"ohem_thresh": 1.5}, "r.yaml")
    with pytest.raises(ConfigError, match="aux_weight"):
        LossConfig(aux_weight=-1)
    with pytest.raises(ConfigError, match="ohem_min_kept"):
        LossConfig(ohem_min_kept=-5)
