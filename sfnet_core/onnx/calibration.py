"""Where int8 calibration frames come from: a folder of images, one image, or a bag.

``CalibrationSource`` checks the source when it is made (it exists, ``image_topic`` only for a
bag, a bag reader at hand) and ``read()`` yields RGB uint8 frames ``(H, W, 3)`` spread evenly
over it. Bags are read by the ROS layer, which hands its reader in (``bag_frames``): this library
never imports it. Messages name the ``sfnet-export`` options they come from.

Nothing here imports numpy, OpenCV or torch at import time: the command line checks its
arguments with it before those load.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sfnet_core.errors import ConfigError, DataError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["IMAGE_SUFFIXES", "BAG_SUFFIXES", "BagFrames", "CalibrationSource", "spread"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
BAG_SUFFIXES = (".mcap", ".db3", ".bag")

# bag_frames(path, image_topic, count) -> RGB uint8 frames (the ROS layer's bag reader)
BagFrames = Callable[[Path, "str | None", int], Iterator["np.ndarray"]]


def spread(count: int, wanted: int) -> list[int]:
    """``wanted`` indices spread evenly over ``range(count)`` (all of them when there are fewer)."""
    if wanted >= count:
        return list(range(count))
    return sorted({round(i * (count - 1) / max(1, wanted - 1)) for i in range(wanted)})


@dataclass(frozen=True)
class CalibrationSource:
    """``frames`` calibration frames of ``path`` (see the module docstring); raises ``ConfigError``
    for a source that cannot be read."""

    path: Path
    frames: int = 16
    image_topic: str | None = None
    bag_frames: BagFrames | None = None

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ConfigError(f"--frames: must be >= 1, got {self.frames}")
        if not self.path.exists():
            raise ConfigError(f"--calibration: {self.path} not found")
        if self.image_topic and not self.is_bag:
            raise ConfigError(f"--image-topic: only for a bag; {self.path} is not one")
        if self.is_bag and self.bag_frames is None:
            raise ConfigError(f"--calibration: {self.path} is a bag; reading bags needs the ROS layer: "
                              "run the sfnet-export command (sfnet_ros.tools.export_with_bags)")

    @property
    def is_bag(self) -> bool:
        """A bag file, or a rosbag2 folder (it holds ``metadata.yaml``)."""
        return self.path.suffix.lower() in BAG_SUFFIXES or (self.path / "metadata.yaml").is_file()

    def read(self) -> Iterator[np.ndarray]:
        """The RGB uint8 frames (H, W, 3), read one at a time."""
        if self.is_bag:
            assert self.bag_frames is not None  # checked when the source was made
            return self.bag_frames(self.path, self.image_topic, self.frames)
        return self._images()

    def describe(self, count: int) -> str:
        """What ``sfnet.quantization`` records as the calibration: ``"<name> (<count> frames)"``."""
        return f"{self.path.name} ({count} frames)"

    def _images(self) -> Iterator[np.ndarray]:
        import cv2  # third-party, lazy: the command line checks its arguments before it loads

        path = self.path
        files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"--calibration: {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        for index in spread(len(files), self.frames):
            image = cv2.imread(str(files[index]), cv2.IMREAD_COLOR)
            if image is None:
                raise DataError(f"--calibration: {files[index]} is not a readable image")
            yield image[..., ::-1].copy()
