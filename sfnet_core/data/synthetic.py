"""Procedural driving scenes with pixel-exact Cityscapes train-id labels.

No dataset can be downloaded where this project is built and tested, so training, evaluation,
bag replay and the demo run on scenes drawn here. A scene is a small 3-D world (a straight road
with lanes, sidewalks, facades or fields with trees, poles with signs, cars and pedestrians)
seen by a pinhole camera at driver height; everything is drawn with ``cv2.fillPoly`` in
back-to-front order into the image and the label map at once, so labels match pixels exactly.

* ``render_scene(seed, h, w)``: one frame; the seed chooses the layout, camera, palette, lighting.
* ``render_sequence(seed, n, h, w)``: a drive through the same world (the ego camera moves
  forward, other cars move along their lanes, pedestrians walk), frame 0 == ``render_scene``.
* ``write_folder_dataset(root, n, h, w)``: the folder-dataset layout of ``sfnet_core.data``.

The world is cut into chunks of ``CHUNK`` metres along the road, each generated from its own
``(seed, chunk)`` random stream, so a frame never depends on how long the sequence is.
Classes are kept visually distinct (colour and texture cues) so a small network learns them in
minutes on a CPU, while layouts, sizes, positions, palettes and lighting vary per seed.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

# Cityscapes train ids (checked against cityscapesscripts' table in the tests).
ROAD, SIDEWALK, BUILDING, POLE, SIGN, VEGETATION, TERRAIN, SKY, PERSON, CAR = 0, 1, 2, 5, 7, 8, 9, 10, 11, 13
IGNORE = 255
#: Train-id names the generator draws (a subset of the 19 Cityscapes classes).
SYNTHETIC_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "pole", "traffic sign", "vegetation", "terrain", "sky", "person", "car",
)

CHUNK = 40.0  # metres of road generated from one random stream
NEAR = 0.8    # near clipping plane (m)
FAR = 160.0   # objects farther than this are not drawn

_SHIFT = 3  # fillPoly fixed-point bits: sub-pixel vertex positions
_SCALE = float(1 << _SHIFT)

# Texture amplitude per train id at three noise scales (fine, mid, coarse): vegetation and
# grass are strongly textured, sky and signs almost flat. That is the main texture cue.
_TEX = np.zeros((256, 3), np.float32)
for _cls, _amp in {
    ROAD: (0.05, 0.04, 0.10), SIDEWALK: (0.04, 0.03, 0.06), BUILDING: (0.03, 0.04, 0.06),
    POLE: (0.02, 0.0, 0.03), SIGN: (0.02, 0.0, 0.0), VEGETATION: (0.16, 0.30, 0.15),
    TERRAIN: (0.14, 0.10, 0.14), SKY: (0.008, 0.02, 0.05), PERSON: (0.03, 0.03, 0.0),
    CAR: (0.02, 0.02, 0.02), IGNORE: (0.02, 0.0, 0.0),
}.items():
    _TEX[_cls] = _amp

_BUILDING_COLORS = np.array([
    (150, 140, 130), (175, 160, 135), (140, 85, 70), (120, 120, 125), (195, 190, 180),
    (110, 95, 85), (160, 120, 95), (185, 175, 150), (100, 105, 115),
], np.float32)
_CAR_COLORS = np.array([
    (200, 30, 30), (30, 60, 170), (230, 230, 235), (25, 25, 30), (160, 165, 170),
    (20, 110, 60), (220, 170, 20), (120, 20, 30), (70, 80, 95),
], np.float32)
_CLOTH_COLORS = np.array([
    (200, 40, 40), (40, 70, 160), (230, 220, 60), (40, 140, 60), (240, 240, 240),
    (30, 30, 30), (230, 120, 30), (150, 50, 150), (90, 60, 40),
], np.float32)
_SKIN_COLORS = np.array([(240, 200, 170), (200, 150, 110), (140, 95, 60), (90, 60, 40)], np.float32)


@dataclass
class _Part:
    poly: np.ndarray                     # (n, 3) world points (x lateral, y up, z forward), t = 0
    cls: int | None                      # train id; None = image detail only (windows, lights)
    color: tuple[float, float, float]
    normal: np.ndarray | None = None     # (3,) outward normal for back-face culling
    group: int = 0                       # > 0: poly is many polygons of `group` vertices (windows)


@dataclass
class _Object:
    x: float
    z: float
    parts: list[_Part]
    speed: float = 0.0   # metres per frame along +z
    backdrop: bool = False  # facades / tree walls: drawn first, they bound the street

    def __post_init__(self) -> None:
        # Packed once: all part vertices in one array so a frame projects them in one numpy op.
        self.verts = np.concatenate([p.poly for p in self.parts]).astype(np.float64)
        self.bounds = np.cumsum([0] + [len(p.poly) for p in self.parts])
        self.normals = np.array([p.normal if p.normal is not None else (0.0, 0.0, 0.0) for p in self.parts])
        self.culled = np.array([p.normal is not None for p in self.parts])
        self.firsts = self.verts[self.bounds[:-1]]


@dataclass
class _Camera:
    f: float
    cx: float
    cy: float
    height: float
    yaw: float
    x: float
    z: float

    def to_cam(self, p: np.ndarray) -> np.ndarray:
        """(n, 3) world -> (n, 3) camera coordinates (x right, y up, z forward)."""
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        dx, dz = p[:, 0] - self.x, p[:, 2] - self.z
        return np.stack([c * dx - s * dz, p[:, 1] - self.height, s * dx + c * dz], axis=1)

    def project(self, pc: np.ndarray) -> np.ndarray:
        """(n, 3) camera coordinates (z > 0) -> (n, 2) pixel coordinates (u, v)."""
        return np.stack([self.cx + self.f * pc[:, 0] / pc[:, 2], self.cy - self.f * pc[:, 1] / pc[:, 2]], axis=1)


def _clip_near(pc: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman clip of a planar polygon (n, 3) against z >= NEAR."""
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


def _quad_x(x: float, z0: float, z1: float, y0: float, y1: float) -> np.ndarray:
    """Rectangle in the plane x = const (a facade along the road)."""
    return np.array([(x, y0, z0), (x, y1, z0), (x, y1, z1), (x, y0, z1)], np.float64)


def _quad_z(z: float, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    """Rectangle in the plane z = const (facing the camera)."""
    return np.array([(x0, y0, z), (x0, y1, z), (x1, y1, z), (x1, y0, z)], np.float64)


def _ellipse_z(z: float, x: float, y: float, rx: float, ry: float, n: int = 14) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([x + rx * np.cos(a), y + ry * np.sin(a), np.full(n, z)], axis=1)


def _jitter(rng: np.random.Generator, color, amount: float = 18.0) -> tuple[float, float, float]:
    c = np.clip(np.asarray(color, np.float32) + rng.uniform(-amount, amount, 3), 0, 255)
    return tuple(float(v) for v in c)


@dataclass
class _Scene:
    """Per-seed constants: camera, road geometry, palette, lighting."""

    seed: int
    f_ratio: float
    horizon: float          # horizon row as a fraction of the height
    cam_height: float
    yaw: float
    cam_x: float
    speed: float            # ego metres per frame
    lane_w: float
    lanes_per_dir: int
    parking: float          # width of a parking lane at each kerb (0 = none)
    sidewalk: dict[int, float]   # side (-1 left, +1 right) -> width (m)
    urban_prob: dict[int, float]
    road_color: np.ndarray
    sidewalk_color: np.ndarray
    terrain_color: np.ndarray
    veg_color: np.ndarray
    sky_top: np.ndarray
    sky_bottom: np.ndarray
    pole_color: np.ndarray
    shade: dict[int, float]      # facade brightness per side (sun direction)
    gain: float
    cast: np.ndarray
    gamma: float
    noise_sigma: float
    blur: bool
    hood: float                  # ego hood height as a fraction of the image (0 = none)
    _chunks: dict[int, list[_Object]] = field(default_factory=dict)

    @property
    def road_half(self) -> float:
        return self.lane_w * self.lanes_per_dir + self.parking

    @classmethod
    def from_seed(cls, seed: int) -> _Scene:
        rng = np.random.default_rng([seed, 0])
        lanes = int(rng.choice([1, 1, 2]))
        lane_w = float(rng.uniform(3.0, 3.8))
        ego_lane = int(rng.integers(0, lanes))
        sky_kind = rng.random()
        sky_top = np.array([60, 110, 190] if sky_kind < 0.6 else [120, 140, 170], np.float32)
        sky_bottom = np.array([170, 200, 230] if sky_kind < 0.6 else [190, 200, 210], np.float32)
        sun = 1 if rng.random() < 0.5 else -1
        return cls(
            seed=seed,
            f_ratio=float(rng.uniform(0.75, 1.05)),
            horizon=float(rng.uniform(0.36, 0.5)),
            cam_height=float(rng.uniform(1.2, 1.7)),
            yaw=float(rng.uniform(-0.1, 0.1)),
            cam_x=lane_w * (ego_lane + 0.5) + float(rng.uniform(-0.3, 0.3)),
            speed=float(rng.uniform(0.4, 1.0)),
            lane_w=lane_w,
            lanes_per_dir=lanes,
            parking=float(rng.uniform(2.0, 2.5)) if rng.random() < 0.5 else 0.0,
            sidewalk={-1: float(rng.uniform(1.5, 4.0)), 1: float(rng.uniform(1.5, 4.0))},
            urban_prob={s: float(rng.choice([0.15, 0.6, 0.9])) for s in (-1, 1)},
            road_color=np.array(_jitter(rng, (85, 85, 90), 12), np.float32),
            sidewalk_color=np.array(_jitter(rng, (185, 160, 170), 15), np.float32),
            terrain_color=np.array(_jitter(rng, (150, 170, 80), 18), np.float32),
            veg_color=np.array(_jitter(rng, (55, 100, 40), 15), np.float32),
            sky_top=np.array(_jitter(rng, sky_top, 15), np.float32),
            sky_bottom=np.array(_jitter(rng, sky_bottom, 10), np.float32),
            pole_color=np.array(_jitter(rng, (120, 125, 120), 25), np.float32),
            shade={sun: 1.0, -sun: float(rng.uniform(0.55, 0.85))},
            gain=float(rng.uniform(0.6, 1.3)),
            cast=rng.uniform(0.9, 1.1, 3).astype(np.float32),
            gamma=float(rng.uniform(0.8, 1.25)),
            noise_sigma=float(rng.uniform(1.0, 6.0)),
            blur=bool(rng.random() < 0.4),
            hood=float(rng.uniform(0.06, 0.14)) if rng.random() < 0.3 else 0.0,
        )

    # -------------------------------------------------------------- world chunks
    def side_urban(self, k: int, side: int) -> bool:
        return bool(np.random.default_rng([self.seed, 1, k + 10_000, side + 2]).random() < self.urban_prob[side])

    def chunk(self, k: int) -> list[_Object]:
        objs = self._chunks.get(k)
        if objs is None:
            if len(self._chunks) > 64:  # long sequences: drop chunks far behind
                self._chunks.pop(min(self._chunks))
            objs = self._chunks[k] = self._make_chunk(k)
        return objs

    def _make_chunk(self, k: int) -> list[_Object]:
        rng = np.random.default_rng([self.seed, 2, k + 10_000])
        z0, z1 = k * CHUNK, (k + 1) * CHUNK
        objs: list[_Object] = []
        rh = self.road_half
        for side in (-1, 1):
            edge = rh + self.sidewalk[side]
            if self.side_urban(k, side):
                objs += self._buildings(rng, side, edge, z0, z1)
                if rng.random() < 0.3:
                    objs.append(self._tree(rng, side * (edge - 0.8), rng.uniform(z0, z1)))
            else:
                objs += self._green(rng, side, edge, z0, z1)
            z = z0 + rng.uniform(0, 15)
            while z < z1:
                objs.append(self._pole(rng, side * (rh + 0.35), z, sign=rng.random() < 0.55))
                z += rng.uniform(12, 30)
            for _ in range(rng.poisson(1.0)):
                objs.append(self._person(rng, side * (rh + rng.uniform(0.5, self.sidewalk[side] - 0.3)),
                                         rng.uniform(z0, z1)))
        lanes = self.lanes_per_dir
        ego_lane = int(self.cam_x // self.lane_w)
        for _ in range(rng.poisson(0.8)):  # same direction, moving with traffic
            lane = int(rng.integers(0, lanes))
            x, z = self.lane_w * (lane + 0.5) + rng.uniform(-0.3, 0.3), rng.uniform(z0, z1)
            if lane == ego_lane:  # keeps its distance to the ego car, never drives through it
                objs.append(self._car(rng, x, z + 13 if -6 < z < 7 else z, self.speed))
            else:
                objs.append(self._car(rng, x, z, self.speed * rng.uniform(0.6, 1.2)))
        for _ in range(rng.poisson(0.8)):  # oncoming
            x = -self.lane_w * (rng.integers(0, lanes) + 0.5) + rng.uniform(-0.3, 0.3)
            objs.append(self._car(rng, x, rng.uniform(z0, z1), -rng.uniform(0.3, 1.0)))
        for _ in range(rng.poisson(1.2) if self.parking else 0):  # parked at the kerb
            side = 1 if rng.random() < 0.5 else -1
            objs.append(self._car(rng, side * (rh - self.parking / 2), rng.uniform(z0, z1), 0.0))
        if k == 0:  # the first frame always shows every class (a car ahead, a person, a sign)
            x = self.lane_w * (ego_lane + 0.5)
            objs.append(self._car(rng, x, rng.uniform(10, 30), self.speed))
            side = 1 if rng.random() < 0.5 else -1
            objs.append(self._person(rng, side * (rh + min(1.0, self.sidewalk[side] / 2)), rng.uniform(12, 25)))
            objs.append(self._pole(rng, -side * (rh + 0.35), rng.uniform(10, 22), sign=True))
        return objs

    def _buildings(self, rng, side: int, edge: float, z0: float, z1: float) -> list[_Object]:
        objs = []
        z = z0
        while z < z1 - 2:
            length = min(rng.uniform(8, 30), z1 - z)
            if rng.random() < 0.15:  # a gap between blocks
                z += length * 0.4
                continue
            x = side * (edge + rng.uniform(0, 1.5))
            h = rng.uniform(6, 28)
            depth = rng.uniform(8, 15)
            color = np.clip(_BUILDING_COLORS[rng.integers(len(_BUILDING_COLORS))] + rng.uniform(-15, 15, 3), 0, 255)
            shade = self.shade[side]
            facade = tuple(float(c) for c in color * shade)
            front = tuple(float(c) for c in color * shade * 0.85)
            n_side = np.array([-side, 0, 0], np.float64)
            parts = [
                _Part(_quad_z(z, x, x + side * depth, 0, h), BUILDING, front, np.array([0, 0, -1.0])),
                _Part(_quad_z(z + length, x, x + side * depth, 0, h), BUILDING, front, np.array([0, 0, 1.0])),
                _Part(_quad_x(x, z, z + length, 0, h), BUILDING, facade, n_side),
            ]
            # windows: image-only detail on the facade, a regular grid per building
            win = tuple(float(c) for c in np.array([60, 70, 85]) * rng.uniform(0.6, 1.3))
            floor_h, col_w = rng.uniform(2.8, 3.6), rng.uniform(2.0, 3.5)
            ww, wh = col_w * rng.uniform(0.35, 0.6), floor_h * rng.uniform(0.35, 0.55)
            x_win = x - side * 0.02
            quads = [_quad_x(x_win, fz, fz + ww, fy, fy + wh)
                     for fy in np.arange(1.0, h - floor_h * 0.6, floor_h)
                     for fz in np.arange(z + 0.8, z + length - col_w * 0.8, col_w)]
            if quads:
                parts.append(_Part(np.concatenate(quads), None, win, n_side, group=4))
            objs.append(_Object(x, z, parts, backdrop=True))
            z += length
        return objs

    def _green(self, rng, side: int, edge: float, z0: float, z1: float) -> list[_Object]:
        objs = []
        x = side * (edge + rng.uniform(5, 15))
        zs = np.linspace(z0, z1, 9)
        tops = rng.uniform(4, 14, len(zs))
        poly = np.concatenate([[(x, 0.0, z0)], np.stack([np.full(len(zs), x), tops, zs], 1), [(x, 0.0, z1)]])
        color = _jitter(rng, self.veg_color * self.shade[side], 10)
        objs.append(_Object(x, z0, [_Part(poly, VEGETATION, color, np.array([-side, 0, 0.0]))], backdrop=True))
        z = z0 + rng.uniform(0, 10)
        while z < z1:
            objs.append(self._tree(rng, side * (edge + rng.uniform(1.0, 4.0)), z))
            z += rng.uniform(6, 16)
        return objs

    def _tree(self, rng, x: float, z: float) -> _Object:
        trunk_h = rng.uniform(1.5, 3.5)
        r = rng.uniform(1.2, 2.8)
        veg = self.veg_color * rng.uniform(0.8, 1.2)
        parts = [_Part(_quad_z(z, x - 0.15, x + 0.15, 0, trunk_h + r * 0.5), VEGETATION, (90.0, 65.0, 45.0))]
        for _ in range(3):
            parts.append(_Part(
                _ellipse_z(z - 0.01, x + rng.uniform(-0.5, 0.5) * r, trunk_h + r * rng.uniform(0.6, 1.1),
                           r * rng.uniform(0.7, 1.0), r * rng.uniform(0.6, 0.9)),
                VEGETATION, _jitter(rng, veg, 12)))
        return _Object(x, z, parts)

    def _pole(self, rng, x: float, z: float, sign: bool) -> _Object:
        h = rng.uniform(4.0, 8.0)
        w = rng.uniform(0.14, 0.25)
        parts = [_Part(_quad_z(z, x - w / 2, x + w / 2, 0, h), POLE, tuple(float(c) for c in self.pole_color))]
        if sign:
            y = rng.uniform(2.2, min(3.2, h - 0.5))
            s = rng.uniform(0.6, 0.9)
            sx = x - np.sign(x) * s * 0.5  # signs hang towards the road
            kind = rng.integers(3)
            zs = z - 0.02
            if kind == 0:  # round: red ring, white face
                outer, inner = _ellipse_z(zs, sx, y, s / 2, s / 2), _ellipse_z(zs - 0.01, sx, y, s * 0.35, s * 0.35)
                parts += [_Part(outer, SIGN, (210.0, 30.0, 30.0)), _Part(inner, None, (240.0, 240.0, 240.0))]
            elif kind == 1:  # square blue with a white symbol
                parts += [_Part(_quad_z(zs, sx - s / 2, sx + s / 2, y - s / 2, y + s / 2), SIGN, (30.0, 80.0, 200.0)),
                          _Part(_quad_z(zs - 0.01, sx - s / 6, sx + s / 6, y - s / 4, y + s / 4), None,
                                (240.0, 240.0, 240.0))]
            else:  # yellow diamond
                d = np.array([(sx, y + s / 2, zs), (sx + s / 2, y, zs), (sx, y - s / 2, zs), (sx - s / 2, y, zs)])
                parts.append(_Part(d, SIGN, (240.0, 200.0, 20.0)))
        return _Object(x, z, parts)

    def _person(self, rng, x: float, z: float) -> _Object:
        h = rng.uniform(1.55, 1.95)
        w = h * 0.26
        cloth = _jitter(rng, _CLOTH_COLORS[rng.integers(len(_CLOTH_COLORS))], 20)
        pants = _jitter(rng, (45, 45, 60), 20)
        skin = tuple(float(c) for c in _SKIN_COLORS[rng.integers(len(_SKIN_COLORS))])
        leg = h * 0.47
        stride = rng.uniform(0.0, 0.15)
        parts = [
            _Part(_quad_z(z, x - w * 0.4 - stride, x - w * 0.05 - stride / 2, 0, leg), PERSON, pants),
            _Part(_quad_z(z, x + w * 0.05 + stride / 2, x + w * 0.4 + stride, 0, leg), PERSON, pants),
            _Part(_quad_z(z, x - w / 2, x + w / 2, leg, h * 0.86), PERSON, cloth),
            _Part(_ellipse_z(z, x, h * 0.92, h * 0.07, h * 0.08, 10), PERSON, skin),
        ]
        speed = rng.uniform(-0.12, 0.12)
        return _Object(x, z, parts, speed=speed)

    def _car(self, rng, x: float, z: float, speed: float) -> _Object:
        w, length = rng.uniform(1.65, 1.95), rng.uniform(3.8, 4.8)
        hb, hc = rng.uniform(0.75, 0.95), rng.uniform(1.35, 1.6)
        body = np.clip(_CAR_COLORS[rng.integers(len(_CAR_COLORS))] + rng.uniform(-15, 15, 3), 0, 255)
        col = lambda k: tuple(float(c) for c in body * k)  # noqa: E731
        glass = (35.0, 45.0, 60.0)
        x0, x1, z1 = x - w / 2, x + w / 2, z + length
        parts = []
        # lower body: a box; faces culled by their normals, then the cabin on top
        parts.append(_Part(_quad_z(z, x0, x1, 0.2, hb), CAR, col(0.9), np.array([0, 0, -1.0])))
        parts.append(_Part(_quad_z(z1, x0, x1, 0.2, hb), CAR, col(0.9), np.array([0, 0, 1.0])))
        parts.append(_Part(_quad_x(x0, z, z1, 0.2, hb), CAR, col(0.75), np.array([-1.0, 0, 0])))
        parts.append(_Part(_quad_x(x1, z, z1, 0.2, hb), CAR, col(0.75), np.array([1.0, 0, 0])))
        parts.append(_Part(np.array([(x0, hb, z), (x1, hb, z), (x1, hb, z1), (x0, hb, z1)]), CAR, col(1.0),
                           np.array([0, 1.0, 0])))
        # wheels (label car) below the body, on both sides and ends
        for zw in (z + 0.8, z1 - 0.8):
            for xw in (x0, x1):
                parts.append(_Part(_quad_x(xw, zw - 0.35, zw + 0.35, 0.0, 0.55), CAR, (20.0, 20.0, 20.0),
                                   np.array([np.sign(xw - x), 0, 0])))
        parts.append(_Part(_quad_z(z, x0 + 0.1, x1 - 0.1, 0.0, 0.25), CAR, (20.0, 20.0, 20.0), np.array([0, 0, -1.0])))
        parts.append(_Part(_quad_z(z1, x0 + 0.1, x1 - 0.1, 0.0, 0.25), CAR, (20.0, 20.0, 20.0), np.array([0, 0, 1.0])))
        # lights on the end facing the camera
        light = (220.0, 30.0, 30.0) if speed >= 0 else (240.0, 240.0, 210.0)
        for lx in (x0 + 0.1, x1 - 0.45):
            parts.append(_Part(_quad_z(z - 0.01, lx, lx + 0.35, hb - 0.3, hb - 0.1), None, light,
                               np.array([0, 0, -1.0])))
        # cabin: slanted windows front and back
        cz0, cz1, inset = z + length * 0.22, z1 - length * 0.25, 0.12
        cab = [
            (np.array([(x0 + inset, hb, z + length * 0.15), (x1 - inset, hb, z + length * 0.15),
                       (x1 - inset, hc, cz0), (x0 + inset, hc, cz0)]), np.array([0, 0.5, -1.0])),
            (np.array([(x0 + inset, hb, z1 - length * 0.1), (x1 - inset, hb, z1 - length * 0.1),
                       (x1 - inset, hc, cz1), (x0 + inset, hc, cz1)]), np.array([0, 0.5, 1.0])),
            (np.array([(x0 + inset, hb, z + length * 0.15), (x0 + inset, hc, cz0), (x0 + inset, hc, cz1),
                       (x0 + inset, hb, z1 - length * 0.1)]), np.array([-1.0, 0, 0])),
            (np.array([(x1 - inset, hb, z + length * 0.15), (x1 - inset, hc, cz0), (x1 - inset, hc, cz1),
                       (x1 - inset, hb, z1 - length * 0.1)]), np.array([1.0, 0, 0])),
        ]
        for poly, n in cab:
            parts.append(_Part(poly, CAR, glass, n))
        parts.append(_Part(np.array([(x0 + inset, hc, cz0), (x1 - inset, hc, cz0), (x1 - inset, hc, cz1),
                                     (x0 + inset, hc, cz1)]), CAR, col(1.0), np.array([0, 1.0, 0])))
        return _Object(x, z, parts, speed=speed)

    # -------------------------------------------------------------- rendering
    def camera(self, t: int, height: int, width: int) -> _Camera:
        # gentle steering and pitch wobble, smooth in t so consecutive frames are coherent
        yaw = self.yaw + 0.03 * math.sin(0.07 * t + self.seed % 7)
        x = self.cam_x + 0.25 * math.sin(0.05 * t + self.seed % 5)
        cy = (self.horizon + 0.004 * math.sin(0.9 * t)) * height
        return _Camera(self.f_ratio * width, width / 2, cy, self.cam_height, yaw, x, self.speed * t)

    def render(self, t: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        cam = self.camera(t, height, width)
        rng = np.random.default_rng([self.seed, 3, t])
        label = np.full((height, width), SKY, np.uint8)
        img = self._sky(height, width, cam, rng)
        self._ground(label, img, cam)
        img_u8 = np.ascontiguousarray(np.clip(img, 0, 255).astype(np.uint8))
        self._objects(label, img_u8, cam, t, width, height)
        if self.hood > 0:
            self._draw_hood(label, img_u8, height, width)
        return self._finish(label, img_u8, rng), label

    def _sky(self, height: int, width: int, cam: _Camera, rng) -> np.ndarray:
        ramp = np.clip(np.arange(height, dtype=np.float32) / max(cam.cy, 1.0), 0, 1)[:, None]
        sky = self.sky_top[None, :] * (1 - ramp) + self.sky_bottom[None, :] * ramp  # (H, 3)
        img = np.repeat(sky[:, None, :], width, axis=1)
        # clouds: soft bright blobs drawn into the image only (they are still sky)
        for _ in range(rng.integers(0, 4)):
            cx, cyy = rng.uniform(0, width), rng.uniform(0, cam.cy * 0.7)
            ax, ay = rng.uniform(0.05, 0.2) * width, rng.uniform(0.02, 0.06) * height
            cv2.ellipse(img, (int(cx), int(cyy)), (int(ax) + 1, int(ay) + 1), 0, 0, 360,
                        tuple(float(v) for v in self.sky_bottom * 1.08 + 10), -1)
        return img

    def _ground(self, label: np.ndarray, img: np.ndarray, cam: _Camera) -> None:
        height, width = label.shape
        first = int(math.floor(cam.cy + 0.5)) + 1
        if first >= height:
            return
        v = np.arange(first, height, dtype=np.float64)[:, None] + 0.5
        u = np.arange(width, dtype=np.float64)[None, :] + 0.5
        zc = cam.f * cam.height / (v - cam.cy)          # depth of the ground at that row
        xc = (u - cam.cx) / cam.f * zc
        c, s = math.cos(cam.yaw), math.sin(cam.yaw)
        X = (cam.x + c * xc + s * zc).astype(np.float32)
        Z = (cam.z - s * xc + c * zc).astype(np.float32)
        aX = np.abs(X)
        rh = self.road_half
        sw = np.where(X > 0, self.sidewalk[1], self.sidewalk[-1]).astype(np.float32)
        road = aX < rh
        walk = ~road & (aX < rh + sw)
        # beyond the sidewalk: pavement in town, grass in the country (per chunk and side)
        k = np.floor(Z / CHUNK).astype(np.int64)
        k0, k1 = int(k.min()), int(k.max())
        urban_lut = np.array([[self.side_urban(kk, sd) for sd in (-1, 1)] for kk in range(k0, k1 + 1)])
        urban = urban_lut[k - k0, (X > 0).astype(np.int64)]
        walk |= ~road & urban
        cls = np.where(road, ROAD, np.where(walk, SIDEWALK, TERRAIN)).astype(np.uint8)
        label[first:] = cls
        colors = np.stack([self.road_color, self.sidewalk_color, self.terrain_color])
        out = colors[np.where(road, 0, np.where(walk, 1, 2))]
        # world-anchored patterns: lane markings, kerb, paving joints (coherent as the car moves)
        lane = np.zeros_like(road)
        for i in range(-self.lanes_per_dir + 1, self.lanes_per_dir):
            dashed = (np.mod(Z, 9.0) < 3.0) if i != 0 or self.lanes_per_dir > 1 else np.ones_like(road)
            lane |= (np.abs(X - i * self.lane_w) < 0.07) & dashed
        lane |= np.abs(aX - (self.lane_w * self.lanes_per_dir - (0.0 if self.parking else 0.25))) < 0.06
        out[lane & road] = (225.0, 225.0, 215.0)
        joints = walk & ((np.mod(X, 0.6) < 0.05) | (np.mod(Z, 0.6) < 0.05))
        out[joints] *= 0.82
        kerb = walk & (aX < rh + 0.15)
        out[kerb] = (175.0, 175.0, 175.0)
        img[first:] = out

    def _objects(self, label: np.ndarray, img: np.ndarray, cam: _Camera, t: int, width: int, height: int) -> None:
        # chunks whose objects can be in view now (moving ones may come from further away)
        reach = 1.2 * max(self.speed, 1.0) * t
        k_lo = int(math.floor((cam.z - 20 - reach) / CHUNK))
        k_hi = int(math.floor((cam.z + FAR + reach) / CHUNK))
        backdrop, inner = [], []
        for k in range(k_lo, k_hi + 1):
            static_ok = cam.z - 40 <= (k + 1) * CHUNK and k * CHUNK <= cam.z + FAR
            for obj in self.chunk(k):
                dz = obj.speed * t
                z = obj.z + dz
                if obj.backdrop:
                    if static_ok:
                        backdrop.append((-z, obj, dz))
                elif cam.z - 10 < z < cam.z + FAR:
                    dist = math.hypot(obj.x - cam.x, z - cam.z)
                    inner.append((-dist, obj, dz))
        backdrop.sort(key=lambda e: e[0])
        inner.sort(key=lambda e: e[0])
        order = [(obj, dz) for _, obj, dz in backdrop + inner]
        if not order:
            return
        cam_pos = np.array([cam.x, cam.height, cam.z])
        verts = np.concatenate([o.verts if dz == 0 else o.verts + (0.0, 0.0, dz) for o, dz in order])
        pc_all = cam.to_cam(verts)
        zc = pc_all[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv_all = cam.project(pc_all)
        start = 0
        for obj, dz in order:
            n = len(obj.verts)
            pc, uv, z = pc_all[start:start + n], uv_all[start:start + n], zc[start:start + n]
            start += n
            if z.max() < NEAR or z.min() > FAR:
                continue
            # back-face culling for all parts of the object at once
            to_cam = cam_pos - (obj.firsts + (0.0, 0.0, dz))
            visible = ~obj.culled | (np.einsum("ij,ij->i", obj.normals, to_cam) > 0)
            b = obj.bounds
            for i, part in enumerate(obj.parts):
                if not visible[i]:
                    continue
                lo, hi = b[i], b[i + 1]
                if part.group:  # many small polygons: keep the ones fully in front, one call
                    g = part.group
                    keep = (z[lo:hi].reshape(-1, g) >= NEAR).all(axis=1)
                    if keep.any():
                        polys = np.round(uv[lo:hi].reshape(-1, g, 2)[keep] * _SCALE).astype(np.int32)
                        cv2.fillPoly(img, list(polys), part.color, cv2.LINE_8, _SHIFT)
                    continue
                if z[lo:hi].min() < NEAR:
                    clipped = _clip_near(pc[lo:hi])
                    if len(clipped) < 3:
                        continue
                    puv = cam.project(clipped)
                else:
                    puv = uv[lo:hi]
                if puv[:, 0].max() < 0 or puv[:, 0].min() > width or puv[:, 1].max() < 0 or puv[:, 1].min() > height:
                    continue
                pts = [np.round(puv * _SCALE).astype(np.int32)]
                cv2.fillPoly(img, pts, part.color, cv2.LINE_8, _SHIFT)
                if part.cls is not None:
                    cv2.fillPoly(label, pts, int(part.cls), cv2.LINE_8, _SHIFT)

    def _draw_hood(self, label: np.ndarray, img: np.ndarray, height: int, width: int) -> None:
        # the ego vehicle's bonnet: void in Cityscapes, so ignore here too
        top = height * (1 - self.hood)
        xs = np.linspace(-0.1, 1.1, 24) * width
        ys = top + (height * self.hood * 0.6) * ((xs / width - 0.5) * 2) ** 2
        poly = np.concatenate([np.stack([xs, ys], 1), [(1.1 * width, height + 2), (-0.1 * width, height + 2)]])
        pts = [np.round(poly * _SCALE).astype(np.int32)]
        cv2.fillPoly(img, pts, (40, 40, 45), cv2.LINE_8, _SHIFT)
        cv2.fillPoly(label, pts, IGNORE, cv2.LINE_8, _SHIFT)

    def _finish(self, label: np.ndarray, img: np.ndarray, rng) -> np.ndarray:
        height, width = label.shape
        fine = rng.standard_normal((height, width), dtype=np.float32)
        mid = cv2.resize(rng.standard_normal((max(height // 3, 2), max(width // 3, 2)), dtype=np.float32),
                         (width, height), interpolation=cv2.INTER_LINEAR)
        coarse = cv2.resize(rng.standard_normal((max(height // 16, 2), max(width // 16, 2)), dtype=np.float32),
                            (width, height), interpolation=cv2.INTER_CUBIC)
        amp = _TEX[label]  # (H, W, 3) per-class texture amplitudes
        tex = amp[..., 0] * fine
        tex += amp[..., 1] * mid
        tex += amp[..., 2] * coarse
        tex += 1.0
        out = cv2.multiply(img, cv2.merge([tex, tex, tex]), dtype=cv2.CV_8U)  # saturating
        if self.blur:
            out = cv2.GaussianBlur(out, (3, 3), 0.8)
        # global lighting: exposure, white balance and tone curve as one per-channel lookup
        ramp = np.power(np.arange(256, dtype=np.float32) / 255.0, self.gamma)[:, None] * self.cast[None, :]
        lut = np.clip(ramp * 255.0 * self.gain + 0.5, 0, 255).astype(np.uint8).reshape(256, 1, 3)
        out = cv2.LUT(out, lut)
        noise = rng.standard_normal((height, width), dtype=np.float32) * self.noise_sigma  # sensor noise
        return cv2.add(out, cv2.merge([noise, noise, noise]), dtype=cv2.CV_8U)


def _check_args(seed: int, height: int, width: int) -> None:
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if height < 8 or width < 8:
        raise ValueError(f"image size must be at least 8x8, got {height}x{width}")


def render_scene(seed: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One street scene chosen by ``seed``.

    Returns ``(image, labels)``: RGB uint8 ``(H, W, 3)`` and Cityscapes train ids uint8 ``(H, W)``
    (255 = ignore, used for the ego vehicle's bonnet). Deterministic for a given seed and size.
    """
    _check_args(seed, height, width)
    return _Scene.from_seed(int(seed)).render(0, height, width)


def render_sequence(seed: int, num_frames: int, height: int, width: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """A drive through scene ``seed``: ``num_frames`` coherent ``(image, labels)`` frames.

    The camera moves forward 0.4..1 m per frame (about 4..10 m/s at 10 Hz) with gentle steering;
    other cars drive along their lanes and pedestrians walk, so objects grow as they approach.
    Frame 0 equals ``render_scene(seed, height, width)``.
    """
    _check_args(seed, height, width)
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")
    scene = _Scene.from_seed(int(seed))
    for t in range(num_frames):
        yield scene.render(t, height, width)


def frame_seed(seed: int, index: int) -> int:
    """Scene seed of frame ``index`` of a synthetic dataset with base ``seed`` (well mixed)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


MARKER = ".sfnet_synthetic"  # the dataset stamp (a cache is reused only if it matches)
TOOL = "sfnet-synthetic"  # the manifest's tool name (sfnet_core.io_utils): what --overwrite may replace


def dataset_stamp(seed: int, splits: dict[str, int], height: int, width: int) -> str:
    """Content of the marker file: what was written (a cache is reused only if it matches)."""
    parts = " ".join(f"{k}={v}" for k, v in splits.items())
    return f"seed={seed} size={height}x{width} {parts}\n"


def _write_png(path: Path, image: np.ndarray) -> None:
    """PNG through Python's file API: a full disk is an OSError naming the file (cv2.imwrite
    would print a libpng line and return False)."""
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError(f"{path}: cannot encode PNG")
    path.write_bytes(buf.tobytes())


def write_folder_dataset(
    root: str | os.PathLike,
    num_frames: int,
    height: int,
    width: int,
    seed: int = 0,
    splits: dict[str, int] | None = None,
    overwrite: bool = True,
    what: str | None = None,
) -> Path:
    """Write ``num_frames`` scenes in the folder-dataset layout and return ``root``.

    ``root/images/<split>/<name>.png``, ``root/labels/<split>/<name>.png`` (train ids) and
    ``root/classes.yaml`` (the Cityscapes table without id_map). ``splits`` maps split names to
    frame counts summing to ``num_frames``; default: 80 % train, the rest val. Frame ``i`` (over
    the splits in order) is ``render_scene(frame_seed(seed, i))``, the same frames as
    ``SyntheticDataset(..., seed, start=i0)``. The folder is written atomically with a manifest
    (``sfnet_core.io_utils``); an existing non-empty folder is only replaced if this function
    wrote it and nothing in it was added or changed since, and with ``overwrite=False`` nothing
    that appears at ``root`` meanwhile is replaced.
    """
    import yaml

    from sfnet_core.data.classes import ClassTable
    from sfnet_core.io_utils import atomic_write, foreign_files

    if splits is None:
        val = num_frames // 5
        splits = {"train": num_frames - val, "val": val}
    if any(n < 0 for n in splits.values()) or sum(splits.values()) != num_frames:
        raise ValueError(f"splits {splits} must be non-negative counts summing to num_frames={num_frames}")
    _check_args(seed, height, width)
    root = Path(root)
    if root.is_dir() and any(root.iterdir()):
        foreign = foreign_files(root, TOOL)
        if foreign is None or foreign:
            detail = "is not a synthetic dataset written by sfnet" if foreign is None else \
                f"holds files sfnet-synthetic did not write or that changed since ({', '.join(foreign[:3])})"
            raise FileExistsError(f"{root}: exists and {detail}; choose an empty folder")
    table = ClassTable.cityscapes()
    classes = {**table.to_dict(), "id_map": None}
    index = 0
    with atomic_write(root, overwrite=overwrite, tool=TOOL, what=what) as tmp:
        for split, count in splits.items():
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "labels" / split).mkdir(parents=True)
            for _ in range(count):
                image, labels = render_scene(frame_seed(seed, index), height, width)
                name = f"synth_{index:06d}.png"
                _write_png(tmp / "images" / split / name, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                _write_png(tmp / "labels" / split / name, labels)
                index += 1
        header = (f"# Synthetic driving scenes (sfnet_core.data.synthetic), seed {seed}, {height}x{width}.\n"
                  "# Labels are Cityscapes train ids; the generator draws: " + ", ".join(SYNTHETIC_CLASSES) + "\n")
        (tmp / "classes.yaml").write_text(header + yaml.safe_dump(classes, sort_keys=False), encoding="utf-8")
        (tmp / MARKER).write_text(dataset_stamp(seed, splits, height, width))
    return root
