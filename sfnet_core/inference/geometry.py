"""Where a camera frame's pixels go: resize policy, network input, output resolution.

A ``FrameGeometry`` describes, for one frame size, every step between the camera image and the
label image the ``Segmenter`` returns, in integer pixel windows so that labels map back to the
frame's pixels exactly:

1. ``window`` ``(y, x, height, width)``: the part of the frame fed to the network (the whole
   frame for ``stretch`` and ``letterbox``; a centred window with the network's aspect ratio for
   ``crop``);
2. ``content`` ``(top, left, height, width)``: where that window lands, bilinearly resized, in the
   network input of ``network_size`` (the whole input for ``stretch`` and ``crop``; a centred,
   aspect-preserving box for ``letterbox``, the bands around it hold the mean colour);
3. the output: at ``output="input"`` labels come back at the frame's resolution (the content's
   scores resized back onto ``window``; pixels outside a crop window are ``UNLABELED``); at
   ``output="network"`` they come at ``network_size`` (letterbox bands are ``UNLABELED``).

``scale_x``, ``scale_y``, ``offset_x``, ``offset_y`` give the affine map from frame pixel
coordinates to output pixel coordinates, in the *corner* convention (pixel ``i`` covers
``[i, i + 1)``): ``x_out = scale_x * x_in + offset_x``. ``pixel_transform()`` gives the same map
in the ROS convention (pixel centres at integers), which is what a ``camera_info`` needs:
``K_out = A @ K`` and ``P_out = A @ P`` (``camera_matrix`` / ``projection_matrix``), with
``width, height = output_size[1], output_size[0]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["RESIZE_POLICIES", "OUTPUT_RESOLUTIONS", "UNLABELED", "FrameGeometry", "plan_geometry"]

RESIZE_POLICIES = ("stretch", "letterbox", "crop")
OUTPUT_RESOLUTIONS = ("input", "network")
UNLABELED = 255  # label value of pixels the network did not see (letterbox bands, outside a crop)

Window = tuple[int, int, int, int]  # (y, x, height, width)


@dataclass(frozen=True)
class FrameGeometry:
    """The mapping of one frame size through the Segmenter (see the module docstring)."""

    input_size: tuple[int, int]  # (H, W) of the camera frame
    network_size: tuple[int, int]  # (h, w) the network sees (before padding to a multiple of 32)
    resize: str  # stretch | letterbox | crop
    output: str  # input | network
    window: Window  # frame window fed to the network, in frame pixels
    content: Window  # where the resized window lands in the network input

    @property
    def resized(self) -> bool:
        """Whether the window is resampled (False: copied 1:1 into the network input)."""
        return self.window[2:] != self.content[2:]

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of the returned labels / confidence."""
        return self.input_size if self.output == "input" else self.network_size

    @property
    def valid(self) -> Window:
        """``(y, x, height, width)`` of the output that holds class labels; elsewhere ``UNLABELED``."""
        return self.window if self.output == "input" else self.content

    @property
    def scale_x(self) -> float:
        return 1.0 if self.output == "input" else self.content[3] / self.window[3]

    @property
    def scale_y(self) -> float:
        return 1.0 if self.output == "input" else self.content[2] / self.window[2]

    @property
    def offset_x(self) -> float:
        return 0.0 if self.output == "input" else self.content[1] - self.window[1] * self.scale_x

    @property
    def offset_y(self) -> float:
        return 0.0 if self.output == "input" else self.content[0] - self.window[0] * self.scale_y

    def to_output(self, x: float, y: float) -> tuple[float, float]:
        """Frame coordinates (corner convention) -> output coordinates (corner convention)."""
        return self.scale_x * x + self.offset_x, self.scale_y * y + self.offset_y

    def pixel_transform(self) -> np.ndarray:
        """3x3 affine ``A`` mapping frame pixel *centres* (ROS / OpenCV convention) to output ones."""
        sx, sy = self.scale_x, self.scale_y
        return np.array([[sx, 0.0, 0.5 * sx + self.offset_x - 0.5],
                         [0.0, sy, 0.5 * sy + self.offset_y - 0.5],
                         [0.0, 0.0, 1.0]])

    def camera_matrix(self, k: np.ndarray | list[float]) -> np.ndarray:
        """The camera matrix K (3x3, or the 9 values of ``CameraInfo.k``) of the output image."""
        return self.pixel_transform() @ np.asarray(k, dtype=np.float64).reshape(3, 3)

    def projection_matrix(self, p: np.ndarray | list[float]) -> np.ndarray:
        """The projection matrix P (3x4, or the 12 values of ``CameraInfo.p``) of the output image."""
        return self.pixel_transform() @ np.asarray(p, dtype=np.float64).reshape(3, 4)


def plan_geometry(
    input_size: tuple[int, int],
    network_size: tuple[int, int] | None,
    resize: str = "stretch",
    output: str = "input",
) -> FrameGeometry:
    """The ``FrameGeometry`` of an ``input_size`` (H, W) frame for a network input of ``network_size``.

    ``network_size=None`` runs at the frame's own size (no resize; every policy is the identity).
    """
    if resize not in RESIZE_POLICIES:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_POLICIES)}, got {resize!r}")
    if output not in OUTPUT_RESOLUTIONS:
        raise ValueError(f"output must be one of {', '.join(OUTPUT_RESOLUTIONS)}, got {output!r}")
    big_h, big_w = int(input_size[0]), int(input_size[1])
    if big_h < 1 or big_w < 1:
        raise ValueError(f"empty frame size {input_size}")
    h, w = (big_h, big_w) if network_size is None else (int(network_size[0]), int(network_size[1]))
    whole_frame: Window = (0, 0, big_h, big_w)
    whole_net: Window = (0, 0, h, w)
    if resize == "stretch" or (h, w) == (big_h, big_w):
        window, content = whole_frame, whole_net
    elif resize == "letterbox":
        scale = min(h / big_h, w / big_w)
        ch, cw = min(h, max(1, round(big_h * scale))), min(w, max(1, round(big_w * scale)))
        window, content = whole_frame, ((h - ch) // 2, (w - cw) // 2, ch, cw)
    else:  # crop: the largest centred frame window with the network's aspect ratio
        scale = max(h / big_h, w / big_w)
        ch, cw = min(big_h, max(1, round(h / scale))), min(big_w, max(1, round(w / scale)))
        window, content = ((big_h - ch) // 2, (big_w - cw) // 2, ch, cw), whole_net
    return FrameGeometry((big_h, big_w), (h, w), resize, output, window, content)
