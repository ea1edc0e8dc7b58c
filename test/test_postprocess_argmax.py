"""The CPU argmax of the post-processing (``postprocess._reduce`` through ``resample_argmax``):
the first class reaching the maximum, as ``torch.argmax``, whatever the score layout; the
confidence summed in class order (the rounding the node's confidence images have always had)."""
from __future__ import annotations

import pytest
import torch

from sfnet_core.inference.postprocess import resample_argmax


def tied_scores(classes: int, seed: int, shape: tuple[int, int] = (37, 61)) -> torch.Tensor:
    """(2, classes, h, w) small integers: many exact ties between classes."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(-3, 4, (2, classes, *shape), generator=gen).float()


@pytest.mark.parametrize("classes", [2, 19, 255])  # uint8 labels: at most 255 classes
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_labels_are_the_first_maximum_in_any_layout(classes: int, layout: torch.memory_format) -> None:
    scores = tied_scores(classes, classes).contiguous(memory_format=layout)
    expected = scores.argmax(1)  # documented: the first maximal index
    assert (scores == scores.amax(1, keepdim=True)).sum(1).max() > 1  # the ties are there
    for band_bytes in (1, 1 << 12, 1 << 30):
        labels, _ = resample_argmax(scores, (37, 61), band_bytes=band_bytes)
        assert labels.dtype == torch.uint8
        assert torch.equal(labels.long(), expected), band_bytes
    # resampled (the width pass makes the bands contiguous): the labels of the resized scores, up
    # to F.interpolate's last-bit rounding, so on continuous scores
    smooth = torch.randn(scores.shape, generator=torch.Generator().manual_seed(classes)).contiguous(
        memory_format=layout)
    up = torch.nn.functional.interpolate(smooth, size=(37, 122), mode="bilinear", align_corners=False)
    labels, _ = resample_argmax(smooth, (37, 122))
    assert (labels.long() == up.argmax(1)).float().mean() > 0.999


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_confidence_is_summed_in_class_order(layout: torch.memory_format) -> None:
    gen = torch.Generator().manual_seed(3)
    scores = (torch.randn(1, 19, 29, 45, generator=gen) * 4).contiguous(memory_format=layout)
    _, conf = resample_argmax(scores, (29, 45), confidence=True, band_bytes=1 << 12)
    best = scores.amax(1)
    total = torch.zeros_like(best)
    for c in range(19):  # the reference: one plane at a time, in class order
        total += (scores[:, c].contiguous() - best).exp()
    expected = total.reciprocal().mul(255).round().to(torch.uint8)
    assert conf is not None and torch.equal(conf, expected)


def test_nan_scores_still_give_a_class() -> None:
    scores = tied_scores(19, 1)
    scores[0, :, 3, 4] = float("nan")
    labels, conf = resample_argmax(scores, (37, 61), confidence=True)
    assert int(labels.max()) < 19 and conf is not None
