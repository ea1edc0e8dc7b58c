"""Segmenter and predict_logits on the CPU with a real (randomly initialised) sfnet_resnet18.

A random network is very sensitive to its input (a little extra padding flips half its labels),
so the comparisons below catch any slip in normalisation, padding, cropping or resizing.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sfnet_core.checkpoint import IMAGENET_MEAN, IMAGENET_STD, save_checkpoint
from sfnet_core.data.classes import ClassTable
from sfnet_core.inference import SegmentationResult, Segmenter, pad_to_multiple, predict_logits
from sfnet_core.models import build_model

CLASSES = ClassTable(names=tuple(f"class{i}" for i in range(19)), colors=tuple((i, i, i) for i in range(19)))


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("sfnet_resnet18", 19).eval()


@pytest.fixture(scope="module")
def segmenter(model: torch.nn.Module) -> Segmenter:
    return Segmenter(model, CLASSES, device="cpu", warmup=False)


def image(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth random RGB image (blocks + noise), uint8 (h, w, 3)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(1, h // 16), max(1, w // 16), 3)).astype(np.float32)
    big = F.interpolate(torch.from_numpy(coarse).permute(2, 0, 1)[None], size=(h, w), mode="bilinear")[0]
    return np.clip(big.permute(1, 2, 0).numpy() + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)


def normalised(img: np.ndarray) -> torch.Tensor:
    """Reference preprocessing, written independently: (1, 3, H, W) float."""
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def reference_logits(model: torch.nn.Module, img: np.ndarray, input_size: tuple[int, int] | None = None) -> torch.Tensor:
    """(1, C, H, W) logits at the original size: resize, pad to 32, forward, crop, upsample."""
    h, w = img.shape[:2]
    x = normalised(img)
    if input_size is not None:
        x = F.interpolate(x, size=input_size, mode="bilinear", align_corners=False)
    ih, iw = x.shape[-2:]
    padded = F.pad(x, (0, -iw % 32, 0, -ih % 32))
    with torch.inference_mode():
        logits = model(padded)[..., :ih, :iw]
    return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float((a == b).mean())


def test_odd_size_matches_reference(segmenter: Segmenter, model: torch.nn.Module) -> None:
    img = image(70, 130, seed=1)
    result = segmenter.segment(img)
    assert isinstance(result, SegmentationResult)
    assert result.labels.shape == (70, 130) and result.labels.dtype == np.uint8
    assert result.confidence is None and result.flows is None
    assert result.labels.max() < 19
    ref = reference_logits(model, img).argmax(1)[0].numpy()
    # channels_last vs contiguous convolutions differ in the last float bits only.
    assert agreement(result.labels, ref) >= 0.999


def test_mixed_sizes_equal_one_by_one(segmenter: Segmenter) -> None:
    a, b = image(70, 130, seed=2), image(50, 90, seed=3)  # canvases 96x160 and 64x96
    c = image(80, 150, seed=4)  # same 96x160 canvas as a: shares a forward with it
    batch = segmenter.segment([a, b, c])
    assert isinstance(batch, list) and len(batch) == 3
    for got, img in zip(batch, (a, b, c)):
        alone = segmenter.segment(img)
        assert got.labels.shape == img.shape[:2]
        assert np.array_equal(got.labels, alone.labels)


def test_same_size_batch_equals_one_by_one(segmenter: Segmenter) -> None:
    images = [image(64, 96, seed=s) for s in (5, 6)]
    batch = segmenter.segment(images, return_confidence=True)
    for got, img in zip(batch, images):
        alone = segmenter.segment(img, return_confidence=True)
        assert np.array_equal(got.labels, alone.labels)
        assert np.abs(got.confidence.astype(int) - alone.confidence.astype(int)).max() <= 1


def test_bgr_flag(segmenter: Segmenter) -> None:
    rgb = image(70, 130, seed=7)
    bgr_view = rgb[..., ::-1]  # a negative-stride view, as OpenCV users produce
    assert np.array_equal(segmenter.segment(bgr_view, bgr=True).labels, segmenter.segment(rgb).labels)
    assert not np.array_equal(segmenter.segment(bgr_view).labels, segmenter.segment(rgb).labels)


def test_input_size_resizes_and_returns_original_resolution(model: torch.nn.Module) -> None:
    seg = Segmenter(model, CLASSES, device="cpu", input_size=(64, 96), warmup=False)
    img = image(70, 130, seed=8)
    labels = seg.segment(img).labels
    assert labels.shape == (70, 130)
    ref = reference_logits(model, img, input_size=(64, 96)).argmax(1)[0].numpy()
    assert agreement(labels, ref) >= 0.999
    # Two sizes, one canvas: both resized to 64x96, one forward.
    other = image(100, 100, seed=9)
    both = seg.segment([img, other])
    assert both[1].labels.shape == (100, 100)
    assert np.array_equal(both[0].labels, labels)


def test_confidence(segmenter: Segmenter, model: torch.nn.Module) -> None:
    img = image(64, 96, seed=10)
    result = segmenter.segment(img, return_confidence=True)
    conf = result.confidence
    assert conf.shape == (64, 96) and conf.dtype == np.uint8
    assert conf.min() >= math.floor(255 / 19)  # max softmax >= 1 / num_classes
    probs = reference_logits(model, img).softmax(1).max(1).values[0].numpy()
    assert np.abs(conf.astype(float) - probs * 255).max() <= 1.0
    assert np.array_equal(result.labels, segmenter.segment(img).labels)


def test_flows(segmenter: Segmenter, model: torch.nn.Module) -> None:
    img = image(70, 130, seed=11)
    result = segmenter.segment(img, return_flows=True)
    padded = pad_to_multiple(normalised(img))  # (1, 3, 96, 160)
    with torch.inference_mode():
        _, flows = model(padded, return_flows=True)
    assert len(flows) >= 1 and len(result.flows) == len(flows)
    for got, ref in zip(result.flows, flows):
        stride = padded.shape[-1] // ref.shape[-1]
        assert got.dtype == np.float32
        assert got.shape == (2, math.ceil(70 / stride), math.ceil(130 / stride))
        np.testing.assert_allclose(got, ref[0, :, : got.shape[1], : got.shape[2]].numpy(), atol=1e-3)
    with pytest.raises(ValueError, match="return_flows needs single-scale"):
        segmenter.segment(img, return_flows=True, flip=True)
    # The FPN baseline has no FAM: asked-for flows are an empty list, not None.
    fpn = Segmenter(build_model("fpn_resnet18", 19), CLASSES, device="cpu", warmup=False)
    assert fpn.segment(image(64, 64, seed=16), return_flows=True).flows == []


def test_precision_on_cpu(model: torch.nn.Module) -> None:
    with pytest.warns(RuntimeWarning, match="fp16 is not supported on the CPU, falling back to fp32"):
        seg = Segmenter(model, CLASSES, device="cpu", precision="fp16", warmup=False)
    assert seg.precision == "fp32"
    assert Segmenter(model, CLASSES, device="cpu", warmup=False).precision == "fp32"  # auto on CPU
    bf16 = Segmenter(model, CLASSES, device="cpu", precision="bf16", warmup=False)
    assert bf16.precision == "bf16"
    labels = bf16.segment(image(64, 64, seed=12)).labels
    assert labels.shape == (64, 64) and labels.dtype == np.uint8
    with pytest.raises(ValueError, match="precision must be one of"):
        Segmenter(model, CLASSES, device="cpu", precision="int8")


def test_predict_logits_single_scale_equals_plain(model: torch.nn.Module) -> None:
    x = pad_to_multiple(normalised(image(64, 96, seed=13)))
    with torch.inference_mode():
        plain = model(x).softmax(1)
        probs = predict_logits(model, x, scales=(1.0,), flip=False)
        torch.testing.assert_close(probs, plain)
        flipped = model(x.flip(-1)).softmax(1).flip(-1)
        torch.testing.assert_close(predict_logits(model, x, flip=True), (plain + flipped) / 2)
        # A window the size of the input is the whole-image path; smaller windows tile it.
        torch.testing.assert_close(predict_logits(model, x, window=(64, 96)), plain)
        tiled = predict_logits(model, x, window=(64, 64))
    assert tiled.shape == plain.shape
    torch.testing.assert_close(tiled.sum(1), torch.ones(1, 64, 96))


def test_multiscale_flip_segment(model: torch.nn.Module, segmenter: Segmenter) -> None:
    img = image(70, 130, seed=14)
    tta = Segmenter(model, CLASSES, device="cpu", scales=(0.75, 1.0, 1.25), flip=True, warmup=False)
    result = tta.segment(img, return_confidence=True)
    assert result.labels.shape == (70, 130) and result.confidence.dtype == np.uint8
    x = pad_to_multiple(normalised(img))
    with torch.inference_mode():
        probs = predict_logits(model, x, scales=(0.75, 1.0, 1.25), flip=True)[..., :70, :130]
    assert agreement(result.labels, probs.argmax(1)[0].numpy()) >= 0.999
    # Per-call override back to the plain path gives the plain labels.
    assert np.array_equal(tta.segment(img, scales=(1.0,), flip=False).labels, segmenter.segment(img).labels)


def test_bad_input(segmenter: Segmenter) -> None:
    with pytest.raises(ValueError, match=r"image 0: expected an \(H, W, 3\) uint8 array, got shape \(8, 8\)"):
        segmenter.segment(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"image 1: .*dtype float32"):
        segmenter.segment([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.float32)])
    with pytest.raises(ValueError, match="empty list"):
        segmenter.segment([])


def test_from_checkpoint(tmp_path: Path, model: torch.nn.Module, segmenter: Segmenter) -> None:
    path = tmp_path / "ck.pt"
    save_checkpoint(path, model, "sfnet_resnet18", CLASSES)
    seg = Segmenter.from_checkpoint(path, input_size=(64, 64))  # warm-up forward at 64x64
    assert seg.device == torch.device("cpu") and seg.precision == "fp32" and seg.classes == CLASSES
    img = image(64, 64, seed=15)
    assert np.array_equal(seg.segment(img).labels, segmenter.segment(img).labels)
