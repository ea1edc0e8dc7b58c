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
from sfnet_core.errors import ConfigError
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


def reference_logits(model: torch.nn.Module, img: np.ndarray,
                     input_size: tuple[int, int] | None = None) -> torch.Tensor:
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
    with pytest.raises(ValueError, match="precision: expected one of"):
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
    # backend torch: the labels of the Segmenter built from the model, exactly (``auto`` picks
    # OpenVINO bf16 on a CPU with native bf16: test_openvino.py)
    seg = Segmenter.from_checkpoint(path, input_size=(64, 64), backend="torch")  # warm-up forward at 64x64
    assert seg.device == torch.device("cpu") and seg.precision == "fp32" and seg.classes == CLASSES
    img = image(64, 64, seed=15)
    assert np.array_equal(seg.segment(img).labels, segmenter.segment(img).labels)


# -- banded resampling (issue #9: post-processing memory) --------------------------------------

from sfnet_core.inference.geometry import plan_geometry  # noqa: E402
from sfnet_core.inference.postprocess import resample_argmax  # noqa: E402

RESAMPLE_CASES = [((15, 20), (97, 131)),   # odd upsampling on both axes
                  ((64, 96), (50, 40)),     # downsampling
                  ((64, 96), (64, 130)),    # width only
                  ((30, 40), (61, 40)),     # height only
                  ((8, 12), (61, 33)),
                  ((24, 32), (300, 400))]   # 12.5x, as 240x320 -> 3000x4000


@pytest.mark.parametrize(("src", "dst"), RESAMPLE_CASES)
def test_banded_resample_is_exact_for_any_band(src: tuple[int, int], dst: tuple[int, int]) -> None:
    torch.manual_seed(sum(src) + sum(dst))
    scores = torch.randn(2, 19, *src) * 3
    whole, whole_conf = resample_argmax(scores, dst, confidence=True, band_bytes=1 << 40)
    for band_bytes in (1, 19 * 4 * dst[1] * 2 * 3, 1 << 16):  # one row, three rows, a few rows
        labels, conf = resample_argmax(scores, dst, confidence=True, band_bytes=band_bytes)
        assert torch.equal(labels, whole), band_bytes  # bit for bit, whatever the band height
        assert torch.equal(conf, whole_conf), band_bytes
        assert torch.equal(resample_argmax(scores, dst, band_bytes=band_bytes)[0], whole)
    # The same labels as a 2-D F.interpolate up to its last-bit rounding (ties on ~1e-5 of pixels).
    ref = F.interpolate(scores, size=dst, mode="bilinear", align_corners=False)
    assert agreement(whole.numpy(), ref.argmax(1).to(torch.uint8).numpy()) >= 0.999
    ref_conf = ref.softmax(1).amax(1).mul(255)
    assert (whole_conf.float() - ref_conf).abs().max() <= 1.0
    # Probabilities in (multi-scale + flip): the confidence is their maximum, no softmax.
    probs = scores.softmax(1)
    labels, conf = resample_argmax(probs, dst, confidence=True, are_probs=True, band_bytes=1)
    ref_p = F.interpolate(probs, size=dst, mode="bilinear", align_corners=False)
    assert (conf.float() - ref_p.amax(1) * 255).abs().max() <= 1.0


@pytest.mark.parametrize("classes", [19, 300])  # 300: the path for more classes than uint8 weights (and CUDA)
def test_margin_is_top1_minus_top2_probability(classes: int) -> None:
    """``confidence="margin"``: p1 - p2 of the softmax at each output pixel (0 where two classes tie),
    for logits and for probabilities; the labels are those of the max-confidence call."""
    torch.manual_seed(classes)
    scores = torch.randn(2, classes, 12, 16) * 3
    scores[0, :2, 0, 0] = 5.0  # a tie for the first place
    scores[0, 2:, 0, 0] = -5.0
    dst = (12, 16)  # no resampling: the reference is exact
    labels, margin = resample_argmax(scores, dst, confidence="margin", band_bytes=1 << 16)
    assert torch.equal(labels, resample_argmax(scores, dst)[0])
    top2 = scores.softmax(1).topk(2, 1).values
    ref = (top2[:, 0] - top2[:, 1]) * 255
    assert (margin.float() - ref).abs().max() <= 1.0 and margin[0, 0, 0] == 0
    probs = scores.softmax(1)
    _, margin_p = resample_argmax(probs, dst, confidence="margin", are_probs=True, band_bytes=1 << 16)
    assert (margin_p.float() - ref).abs().max() <= 1.0
    _, up = resample_argmax(scores, (25, 33), confidence="margin", band_bytes=1)  # resampled, banded
    ref_up = F.interpolate(scores, size=(25, 33), mode="bilinear", align_corners=False).softmax(1).topk(2, 1).values
    assert (up.float() - (ref_up[:, 0] - ref_up[:, 1]) * 255).abs().max() <= 1.0


def test_segmenter_margin_and_bad_confidence_kind(model: torch.nn.Module) -> None:
    seg = Segmenter(model, CLASSES, device="cpu", input_size=(64, 96))
    img = image(64, 96, seed=21)
    top1 = seg.segment(img, return_confidence=True)
    margin = seg.segment(img, return_confidence="margin")
    assert np.array_equal(top1.labels, margin.labels) and (margin.confidence <= top1.confidence).all()
    with pytest.raises(ConfigError, match="return_confidence"):
        seg.segment(img, return_confidence="entropy")


def test_segmenter_labels_do_not_depend_on_band_size(model: torch.nn.Module) -> None:
    img = image(150, 250, seed=20)  # 96x160 network input upsampled to 150x250
    small = Segmenter(model, CLASSES, device="cpu", input_size=(96, 160), band_bytes=1)
    big = Segmenter(model, CLASSES, device="cpu", input_size=(96, 160), band_bytes=1 << 40)
    a, b = small.segment(img, return_confidence=True), big.segment(img, return_confidence=True)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.confidence, b.confidence)
    ref = reference_logits(model, img, input_size=(96, 160)).argmax(1)[0].numpy()
    assert agreement(a.labels, ref) >= 0.999


# -- resize policies, output resolution, geometry (issue #13) ----------------------------------

def test_plan_geometry_windows() -> None:
    g = plan_geometry((480, 640), (256, 256), "letterbox", "network")  # 4:3 into a square
    assert g.window == (0, 0, 480, 640) and g.content == (32, 0, 192, 256)
    assert g.output_size == (256, 256) and g.valid == (32, 0, 192, 256)
    assert g.to_output(0, 0) == (0.0, 32.0) and g.to_output(640, 480) == (256.0, 224.0)
    g = plan_geometry((480, 640), (256, 256), "crop", "network")  # the centred 480x480 window
    assert g.window == (0, 80, 480, 480) and g.content == (0, 0, 256, 256)
    assert g.to_output(80, 0) == (0.0, 0.0) and g.to_output(560, 480) == (256.0, 256.0)
    g = plan_geometry((480, 640), (256, 256), "crop", "input")
    assert g.output_size == (480, 640) and g.valid == (0, 80, 480, 480)
    assert (g.scale_x, g.scale_y, g.offset_x, g.offset_y) == (1.0, 1.0, 0.0, 0.0)
    g = plan_geometry((480, 640), (240, 320), "stretch", "network")
    assert (g.scale_x, g.scale_y) == (0.5, 0.5)
    # camera_info: pixel centres (ROS convention): centre of frame pixel (1, 1) is output (0.25, 0.25)
    k = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    k2 = g.camera_matrix(k)
    np.testing.assert_allclose(k2, [[250, 0, 159.75], [0, 250, 119.75], [0, 0, 1]])
    point = np.array([1.0, -0.5, 4.0])  # a 3-D point projects where the frame's projection maps to
    u_frame = k @ point / point[2]
    u_out = k2 @ point / point[2]
    np.testing.assert_allclose(g.pixel_transform() @ u_frame, u_out)
    p = np.hstack([k, [[10.0], [0], [0]]])
    np.testing.assert_allclose(g.projection_matrix(p.ravel())[:, 3], [5.0, 0, 0])
    with pytest.raises(ValueError, match="resize must be one of"):
        plan_geometry((4, 4), (4, 4), "fit")


def test_letterbox_canvas_and_network_output(model: torch.nn.Module) -> None:
    img = image(60, 130, seed=21)
    seg = Segmenter(model, CLASSES, device="cpu", input_size=(64, 96), resize="letterbox", output="network")
    geom = seg.geometry((60, 130))
    top, left, ch, cw = geom.content
    assert (left, cw) == (0, 96) and ch == round(60 * 96 / 130) and top == (64 - ch) // 2
    canvas = seg.preprocess(img)
    assert canvas.shape == (1, 3, 64, 96)
    # the bands hold the mean colour (0 after normalisation), the content the resized frame
    assert canvas[..., :top, :].abs().max() == 0 and canvas[..., top + ch :, :].abs().max() == 0
    resized = F.interpolate(normalised(img), size=(ch, cw), mode="bilinear", align_corners=False)
    torch.testing.assert_close(canvas[..., top : top + ch, left : left + cw], resized, atol=1e-4, rtol=0)
    result = seg.segment(img, return_confidence=True)
    assert result.labels.shape == (64, 96) and result.geometry == geom
    assert (result.labels[:top] == 255).all() and (result.labels[top + ch :] == 255).all()
    assert (result.confidence[:top] == 0).all()
    with torch.inference_mode():
        ref = model(canvas)[0, :, top : top + ch].argmax(0).numpy()
    assert agreement(result.labels[top : top + ch], ref) >= 0.999
    # back at the frame's resolution every pixel is labelled
    full = Segmenter(model, CLASSES, device="cpu", input_size=(64, 96), resize="letterbox").segment(img)
    assert full.labels.shape == (60, 130) and full.labels.max() < 19
    with torch.inference_mode():
        up = F.interpolate(model(canvas)[..., top : top + ch, :], size=(60, 130), mode="bilinear",
                           align_corners=False)
    assert agreement(full.labels, up.argmax(1)[0].numpy()) >= 0.999


def test_crop_policy_labels_the_window_only(model: torch.nn.Module) -> None:
    img = image(70, 200, seed=22)
    crop = Segmenter(model, CLASSES, device="cpu", input_size=(64, 96), resize="crop")
    geom = crop.geometry((70, 200))
    y, x, h, w = geom.window
    assert (y, h) == (0, 70) and w == round(96 * 70 / 64) and x == (200 - w) // 2
    labels = crop.segment(img).labels
    assert labels.shape == (70, 200)
    assert (labels[:, :x] == 255).all() and (labels[:, x + w :] == 255).all()
    # inside: the labels of the window alone, stretched to the network size
    stretch = Segmenter(model, CLASSES, device="cpu", input_size=(64, 96))
    assert agreement(labels[:, x : x + w], stretch.segment(np.ascontiguousarray(img[:, x : x + w])).labels) >= 0.999
    net = Segmenter(model, CLASSES, device="cpu", input_size=(64, 96), resize="crop", output="network")
    assert net.segment(img).labels.shape == (64, 96) and net.segment(img).labels.max() < 19


def test_finest_flow_only(segmenter: Segmenter) -> None:
    img = image(70, 130, seed=23)
    every = segmenter.segment(img, return_flows=True)
    finest = segmenter.segment(img, return_flows="finest")
    assert len(finest.flows) == 1 and len(every.flows) > 1
    np.testing.assert_array_equal(finest.flows[0], every.flows[-1])
    assert finest.flow_strides == every.flow_strides[-1:]
    stride = finest.flow_strides[0]  # network pixels per cell of the finest FAM's grid (1/4 resolution)
    assert stride == 4.0 and every.flow_strides == sorted(every.flow_strides, reverse=True)
    assert finest.flows[0].shape == (2, math.ceil(70 / stride), math.ceil(130 / stride))
    with pytest.raises(ValueError, match="return_flows must be"):
        segmenter.segment(img, return_flows="coarse")


class TinyNet(torch.nn.Module):
    """A 2-layer stand-in network: compiling SFNet-R18 on this 2-core machine takes minutes."""

    num_classes = 5

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.b = torch.nn.Conv2d(8, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.b(torch.relu(self.a(x))), size=x.shape[-2:], mode="bilinear", align_corners=False)


def test_compiled_pipeline_matches_eager(one_torch_thread: None) -> None:
    torch.manual_seed(3)
    net = TinyNet().eval()
    classes = ClassTable(names=tuple(f"c{i}" for i in range(5)), colors=tuple((i, i, i) for i in range(5)))
    eager = Segmenter(net, classes, device="cpu", input_size=(64, 96), channels_last=False)
    compiled = Segmenter(net, classes, device="cpu", input_size=(64, 96), channels_last=False, pipeline="compiled")
    frames = [image(70, 130, seed=24), image(50, 60, seed=25)]  # two cameras, one forward
    for _ in range(2):  # the second call reuses the compiled step
        got = compiled.segment(frames, return_confidence=True)
        for g, e in zip(got, eager.segment(frames, return_confidence=True)):
            assert g.labels.shape == e.labels.shape and g.geometry == e.geometry
            assert agreement(g.labels, e.labels) >= 0.999
            assert np.abs(g.confidence.astype(int) - e.confidence.astype(int)).max() <= 1
    assert len(compiled._static) == 1
    with pytest.raises(ValueError, match="needs a fixed input_size"):
        Segmenter(net, classes, device="cpu", pipeline="compiled")
    with pytest.raises(ValueError, match="cuda_graph needs a CUDA device"):
        Segmenter(net, classes, device="cpu", input_size=(64, 96), pipeline="cuda_graph")
