"""The ego camera: a pinhole at driver height driving along the road, and near-plane clipping."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sfnet_core.data.synthetic_scenes.world import Scene

__all__ = ["NEAR", "FAR", "Camera", "camera_at", "clip_near"]

NEAR = 0.8    # near clipping plane (m)
FAR = 160.0   # objects farther than this are not drawn


@dataclass
class Camera:
    f: float       # focal length (pixels)
    cx: float      # principal point (pixels)
    cy: float
    height: float  # above the ground (m)
    yaw: float     # heading (radians) about the vertical axis
    x: float       # world position (m)
    z: float

    def to_cam(self, p: np.ndarray) -> np.ndarray:
        """(n, 3) world -> (n, 3) camera coordinates (x right, y up, z forward)."""
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        dx, dz = p[:, 0] - self.x, p[:, 2] - self.z
        return np.stack([c * dx - s * dz, p[:, 1] - self.height, s * dx + c * dz], axis=1)

    def project(self, pc: np.ndarray) -> np.ndarray:
        """(n, 3) camera coordinates (z > 0) -> (n, 2) pixel coordinates (u, v)."""
        return np.stack([self.cx + self.f * pc[:, 0] / pc[:, 2], self.cy - self.f * pc[:, 1] / pc[:, 2]], axis=1)


def camera_at(scene: Scene, t: int, height: int, width: int) -> Camera:
    """The camera of frame ``t``: ``scene.speed`` metres per frame forward, gentle steering and
    pitch wobble, smooth in ``t`` so consecutive frames are coherent."""
    yaw = scene.yaw + 0.03 * math.sin(0.07 * t + scene.seed % 7)
    x = scene.cam_x + 0.25 * math.sin(0.05 * t + scene.seed % 5)
    cy = (scene.horizon + 0.004 * math.sin(0.9 * t)) * height
    return Camera(scene.f_ratio * width, width / 2, cy, scene.cam_height, yaw, x, scene.speed * t)


def clip_near(pc: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman clip of a planar polygon (n, 3) in camera coordinates against z >= NEAR."""
    inside = pc[:, 2] >= NEAR
    if inside.all():
        return pc
    out = []
    n = len(pc)
    for i in range(n):
        a, b = pc[i], pc[(i + 1) % n]
        ia, ib = a[2] >= NEAR, b[2] >= NEAR
        if ia:
            out.append(a)
        if ia != ib:
            t = (NEAR - a[2]) / (b[2] - a[2])
            out.append(a + t * (b - a))
    return np.asarray(out) if len(out) >= 3 else np.empty((0, 3))
