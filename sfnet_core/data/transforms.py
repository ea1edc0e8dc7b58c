"""Joint image/label transforms: the paper's augmentation (random scale 0.75-2.0, random crop,
horizontal flip), the released code's colour jitter and Gaussian blur, crops placed on a class
centroid (class-uniform sampling), and the evaluation normalisation.

Randomness comes from torch's global generator only (``torch.rand``). DataLoader seeds that
generator in every worker (``base_seed + worker_id``, the base drawn from the main process's
torch RNG), and ``sfnet_core.training.distributed.SeededDataset`` reseeds it per sample, so a run with a
fixed ``torch.manual_seed`` (or a resumed run that restores it) sees the same crops and flips.
Pass ``generator=`` for an explicit stream (tests).

Resizing uses OpenCV: bilinear for images, nearest for labels (class ids must not be blended).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from sfnet_core.data.imagenet import IMAGENET_MEAN, IMAGENET_STD


def to_tensor(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32, ``(x / 255 - mean) / std``."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    m = torch.as_tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(3, 1, 1)
    return x.sub_(m).div_(s)


def label_to_tensor(label: np.ndarray) -> torch.Tensor:
    """(H, W) uint8 class ids -> (H, W) int64."""
    return torch.from_numpy(np.ascontiguousarray(label)).long()


def _check_pair(image: np.ndarray, label: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    if label.shape != image.shape[:2]:
        raise ValueError(f"label shape {label.shape} does not match image shape {image.shape[:2]}")


class EvalTransform:
    """Normalise only (evaluation sees the whole image at its native size)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """-> image (3, H, W) float32 normalised, label (H, W) int64."""
        _check_pair(image, label)
        return to_tensor(image, self.mean, self.std), label_to_tensor(label)


class TrainTransform:
    """Random scale, pad, random crop (optionally over a given point), flip, colour jitter, blur.

    Output: image ``(3, crop_h, crop_w)`` float32 normalised, label ``(crop_h, crop_w)`` int64.
    Padding (when the scaled image is smaller than the crop) uses the mean colour for the image,
    i.e. 0 after normalisation, and ``ignore_index`` for the label so it never counts.

    ``color_jitter`` j follows the authors' released code (torchvision's ``ColorJitter`` on PIL
    images): brightness, contrast and saturation factors drawn from ``[1 - j, 1 + j]`` and a hue
    shift from ``[-j, j]`` (fraction of the hue circle), applied in a random order, each step
    rounded back to 8 bits. ``blur`` applies a Gaussian blur with sigma drawn from
    ``[0.15, 1.3]`` to every crop (released ``RandomGaussianBlur``; kernel truncated at 4 sigma).
    Both change the image only.
    """

    def __init__(
        self,
        crop_size: int | Sequence[int],
        scale_range: Sequence[float] = (0.75, 2.0),
        flip: bool = True,
        color_jitter: float = 0.0,
        blur: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        ignore_index: int = 255,
        generator: torch.Generator | None = None,
    ) -> None:
        crop = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(int(c) for c in crop_size)
        if len(crop) != 2 or min(crop) <= 0:
            raise ValueError(f"crop_size must be a positive int or (h, w), got {crop_size!r}")
        lo, hi = (float(s) for s in scale_range)
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < min <= max, got {scale_range!r}")
        if not 0.0 <= float(color_jitter) <= 0.5:
            raise ValueError(f"color_jitter must be in [0, 0.5], got {color_jitter!r}")
        self.crop = crop
        self.scale_range = (lo, hi)
        self.flip = bool(flip)
        self.color_jitter, self.blur = float(color_jitter), bool(blur)
        self.mean, self.std = tuple(mean), tuple(std)
        self.ignore_index = int(ignore_index)
        self.generator = generator
        self._pad_color = tuple(float(round(m * 255)) for m in self.mean)

    def _rand(self, n: int = 1) -> list[float]:
        return torch.rand(n, generator=self.generator).tolist()

    def __call__(self, image: np.ndarray, label: np.ndarray,
                 centroid: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``centroid`` (x, y) in ``image`` pixels: the crop is placed so that it covers this point
        (uniformly among such crops, as the released ``RandomCrop`` with a centroid)."""
        _check_pair(image, label)
        lo, hi = self.scale_range
        scale = lo + (hi - lo) * self._rand()[0]
        h, w = label.shape
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        if (nh, nw) != (h, w):
            image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
            label = cv2.resize(label, (nw, nh), interpolation=cv2.INTER_NEAREST)
        ch, cw = self.crop
        ph, pw = max(ch - nh, 0), max(cw - nw, 0)
        if ph or pw:  # pad bottom / right: point coordinates stay valid
            image = cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=self._pad_color)
            label = cv2.copyMakeBorder(label, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=self.ignore_index)
        ry, rx, rf = self._rand(3)
        if centroid is None:
            y0 = int(ry * (image.shape[0] - ch + 1))
            x0 = int(rx * (image.shape[1] - cw + 1))
        else:
            # the scaled pixel whose centre is nearest the point's centre
            cx = min(int((centroid[0] + 0.5) * nw / w), nw - 1)
            cy = min(int((centroid[1] + 0.5) * nh / h), nh - 1)
            x0 = _covering_offset(cx, cw, image.shape[1], rx)
            y0 = _covering_offset(cy, ch, image.shape[0], ry)
        image = image[y0:y0 + ch, x0:x0 + cw]
        label = label[y0:y0 + ch, x0:x0 + cw]
        if self.flip and rf < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        if self.color_jitter:
            image = self._jitter(np.ascontiguousarray(image))
        if self.blur:
            sigma = 0.15 + 1.15 * self._rand()[0]
            k = 2 * math.ceil(4 * sigma) + 1
            image = cv2.GaussianBlur(np.ascontiguousarray(image), (k, k), sigma, borderType=cv2.BORDER_REPLICATE)
        return to_tensor(image, self.mean, self.std), label_to_tensor(label)

    def _jitter(self, image: np.ndarray) -> np.ndarray:
        """Brightness, contrast, saturation and hue in a random order (PIL ``ImageEnhance`` maths)."""
        j = self.color_jitter
        b, c, s, hue = self._rand(4)
        factors = {"brightness": 1 - j + 2 * j * b, "contrast": 1 - j + 2 * j * c,
                   "saturation": 1 - j + 2 * j * s, "hue": j * (2 * hue - 1)}
        order = torch.randperm(4, generator=self.generator).tolist()
        for op in (("brightness", "contrast", "saturation", "hue")[i] for i in order):
            f = factors[op]
            if op == "brightness":      # blend with black
                x = image.astype(np.float32) * f
            elif op == "contrast":      # blend with the mean grey level of the image
                mean_grey = float(round(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).mean()))
                x = mean_grey + (image.astype(np.float32) - mean_grey) * f
            elif op == "saturation":    # blend with the per-pixel grey image
                grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)[..., None]
                x = grey + (image.astype(np.float32) - grey) * f
            else:                       # rotate the hue channel (0..255 = the full circle)
                hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV_FULL)
                hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(f * 255)) % 256
                image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)
                continue
            image = np.clip(np.rint(x), 0, 255).astype(np.uint8)
        return image


def _covering_offset(point: int, size: int, extent: int, r: float) -> int:
    """Start of a window of ``size`` within ``[0, extent)`` that contains ``point``, uniform by ``r``."""
    lo = max(0, point - size + 1)
    hi = min(extent - size, point)
    if hi < lo:  # cannot happen for 0 <= point < extent >= size; keep the window inside the image
        return max(0, min(extent - size, lo))
    return min(hi, lo + int(r * (hi - lo + 1)))
