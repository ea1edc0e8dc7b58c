"""Joint image/label transforms: the paper's augmentation (random scale 0.75-2.0, random crop,
horizontal flip) plus optional photometric jitter, and the evaluation normalisation.

Randomness comes from torch's global generator only (``torch.rand``). DataLoader seeds that
generator in every worker (``base_seed + worker_id``, the base drawn from the main process's
torch RNG), and ``sfnet_core.training.distributed.SeededDataset`` reseeds it per sample, so a run with a
fixed ``torch.manual_seed`` (or a resumed run that restores it) sees the same crops and flips.
Pass ``generator=`` for an explicit stream (tests).

Resizing uses OpenCV: bilinear for images, nearest for labels (class ids must not be blended).
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    """Random scale, pad, random crop, horizontal flip and (optional) photometric jitter.

    Output: image ``(3, crop_h, crop_w)`` float32 normalised, label ``(crop_h, crop_w)`` int64.
    Padding (when the scaled image is smaller than the crop) uses the mean colour for the image,
    i.e. 0 after normalisation, and ``ignore_index`` for the label so it never counts.
    """

    def __init__(
        self,
        crop_size: int | Sequence[int],
        scale_range: Sequence[float] = (0.75, 2.0),
        flip: bool = True,
        photometric: bool = False,
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
        self.crop = crop
        self.scale_range = (lo, hi)
        self.flip, self.photometric = bool(flip), bool(photometric)
        self.mean, self.std = tuple(mean), tuple(std)
        self.ignore_index = int(ignore_index)
        self.generator = generator
        self._pad_color = tuple(float(round(m * 255)) for m in self.mean)

    def _rand(self, n: int = 1) -> list[float]:
        return torch.rand(n, generator=self.generator).tolist()

    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
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
        if ph or pw:
            image = cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=self._pad_color)
            label = cv2.copyMakeBorder(label, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=self.ignore_index)
        ry, rx, rf = self._rand(3)
        y0 = int(ry * (image.shape[0] - ch + 1))
        x0 = int(rx * (image.shape[1] - cw + 1))
        image = image[y0:y0 + ch, x0:x0 + cw]
        label = label[y0:y0 + ch, x0:x0 + cw]
        if self.flip and rf < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        if self.photometric:
            image = self._jitter(image)
        return to_tensor(image, self.mean, self.std), label_to_tensor(label)

    def _jitter(self, image: np.ndarray) -> np.ndarray:
        """Brightness, contrast and saturation factors in [0.75, 1.25] (image only)."""
        b, c, s = (0.75 + 0.5 * r for r in self._rand(3))
        luma = np.array([0.299, 0.587, 0.114], np.float32)
        x = image.astype(np.float32) * b
        mean = float((x @ luma).mean())
        x = (x - mean) * c + mean          # contrast around the mean grey level
        gray = (x @ luma)[..., None]
        x = gray + (x - gray) * s          # saturation: blend with the per-pixel grey
        return np.clip(x + 0.5, 0, 255).astype(np.uint8)
