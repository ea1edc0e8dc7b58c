"""The things along the road, as world-space polygons: buildings, tree walls, trees, poles with
signs, pedestrians and cars.

World coordinates: x lateral (right positive), y up, z forward along the road, metres. A
``WorldObject`` is a list of planar ``Part`` polygons, each with its train id and colour; the
renderer projects and fills them back to front. Every builder draws from the ``rng`` it is given
in a fixed order, so a chunk of the world is a pure function of its random stream.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sfnet_core.data.synthetic_scenes.train_ids import BUILDING, CAR, PERSON, POLE, SIGN, VEGETATION

__all__ = ["Color", "Part", "WorldObject", "buildings", "tree_wall", "tree", "pole", "person", "car", "jitter", "rgb"]

Color = tuple[float, float, float]  # RGB, 0..255

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
class Part:
    poly: np.ndarray                     # (n, 3) world points (x lateral, y up, z forward), t = 0
    cls: int | None                      # train id; None = image detail only (windows, lights)
    color: Color
    normal: np.ndarray | None = None     # (3,) outward normal for back-face culling
    group: int = 0                       # > 0: poly is many polygons of `group` vertices (windows)


@dataclass
class WorldObject:
    x: float
    z: float
    parts: list[Part]
    speed: float = 0.0   # metres per frame along +z
    backdrop: bool = False  # facades / tree walls: drawn first, they bound the street

    def __post_init__(self) -> None:
        # Packed once: all part vertices in one array so a frame projects them in one numpy op.
        self.verts = np.concatenate([p.poly for p in self.parts]).astype(np.float64)
        self.bounds = np.cumsum([0] + [len(p.poly) for p in self.parts])
        self.normals = np.array([p.normal if p.normal is not None else (0.0, 0.0, 0.0) for p in self.parts])
        self.culled = np.array([p.normal is not None for p in self.parts])
        self.firsts = self.verts[self.bounds[:-1]]


def rgb(values: np.ndarray | tuple[float, float, float]) -> Color:
    """Three numbers as a plain ``Color`` (what ``cv2.fillPoly`` takes)."""
    return float(values[0]), float(values[1]), float(values[2])


def jitter(rng: np.random.Generator, color: np.ndarray | tuple[float, float, float],
           amount: float = 18.0) -> Color:
    """``color`` moved by up to ``amount`` per channel, clipped to 0..255."""
    return rgb(np.clip(np.asarray(color, np.float32) + rng.uniform(-amount, amount, 3), 0, 255))


def _quad_x(x: float, z0: float, z1: float, y0: float, y1: float) -> np.ndarray:
    """Rectangle in the plane x = const (a facade along the road)."""
    return np.array([(x, y0, z0), (x, y1, z0), (x, y1, z1), (x, y0, z1)], np.float64)


def _quad_z(z: float, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    """Rectangle in the plane z = const (facing the camera)."""
    return np.array([(x0, y0, z), (x0, y1, z), (x1, y1, z), (x1, y0, z)], np.float64)


def _ellipse_z(z: float, x: float, y: float, rx: float, ry: float, n: int = 14) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([x + rx * np.cos(a), y + ry * np.sin(a), np.full(n, z)], axis=1)


def buildings(rng: np.random.Generator, side: int, edge: float, z0: float, z1: float,
              shade: float) -> list[WorldObject]:
    """A row of blocks with windows on ``side`` (-1 left, +1 right) beyond ``edge`` metres, z0..z1."""
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
        facade = rgb(color * shade)
        front = rgb(color * shade * 0.85)
        n_side = np.array([-side, 0, 0], np.float64)
        parts = [
            Part(_quad_z(z, x, x + side * depth, 0, h), BUILDING, front, np.array([0, 0, -1.0])),
            Part(_quad_z(z + length, x, x + side * depth, 0, h), BUILDING, front, np.array([0, 0, 1.0])),
            Part(_quad_x(x, z, z + length, 0, h), BUILDING, facade, n_side),
        ]
        # windows: image-only detail on the facade, a regular grid per building
        win = rgb(np.array([60, 70, 85]) * rng.uniform(0.6, 1.3))
        floor_h, col_w = rng.uniform(2.8, 3.6), rng.uniform(2.0, 3.5)
        ww, wh = col_w * rng.uniform(0.35, 0.6), floor_h * rng.uniform(0.35, 0.55)
        x_win = x - side * 0.02
        quads = [_quad_x(x_win, fz, fz + ww, fy, fy + wh)
                 for fy in np.arange(1.0, h - floor_h * 0.6, floor_h)
                 for fz in np.arange(z + 0.8, z + length - col_w * 0.8, col_w)]
        if quads:
            parts.append(Part(np.concatenate(quads), None, win, n_side, group=4))
        objs.append(WorldObject(x, z, parts, backdrop=True))
        z += length
    return objs


def tree_wall(rng: np.random.Generator, side: int, edge: float, z0: float, z1: float, veg_color: np.ndarray,
              shade: float) -> list[WorldObject]:
    """Country side: a wall of vegetation some metres beyond ``edge`` and single trees before it."""
    objs = []
    x = side * (edge + rng.uniform(5, 15))
    zs = np.linspace(z0, z1, 9)
    tops = rng.uniform(4, 14, len(zs))
    poly = np.concatenate([[(x, 0.0, z0)], np.stack([np.full(len(zs), x), tops, zs], 1), [(x, 0.0, z1)]])
    color = jitter(rng, veg_color * shade, 10)
    objs.append(WorldObject(x, z0, [Part(poly, VEGETATION, color, np.array([-side, 0, 0.0]))], backdrop=True))
    z = z0 + rng.uniform(0, 10)
    while z < z1:
        objs.append(tree(rng, side * (edge + rng.uniform(1.0, 4.0)), z, veg_color))
        z += rng.uniform(6, 16)
    return objs


def tree(rng: np.random.Generator, x: float, z: float, veg_color: np.ndarray) -> WorldObject:
    trunk_h = rng.uniform(1.5, 3.5)
    r = rng.uniform(1.2, 2.8)
    veg = veg_color * rng.uniform(0.8, 1.2)
    parts = [Part(_quad_z(z, x - 0.15, x + 0.15, 0, trunk_h + r * 0.5), VEGETATION, (90.0, 65.0, 45.0))]
    for _ in range(3):
        parts.append(Part(
            _ellipse_z(z - 0.01, x + rng.uniform(-0.5, 0.5) * r, trunk_h + r * rng.uniform(0.6, 1.1),
                       r * rng.uniform(0.7, 1.0), r * rng.uniform(0.6, 0.9)),
            VEGETATION, jitter(rng, veg, 12)))
    return WorldObject(x, z, parts)


def pole(rng: np.random.Generator, x: float, z: float, sign: bool, color: np.ndarray) -> WorldObject:
    """A pole at the kerb; with ``sign``, a round, square or diamond traffic sign hung towards the road."""
    h = rng.uniform(4.0, 8.0)
    w = rng.uniform(0.14, 0.25)
    parts = [Part(_quad_z(z, x - w / 2, x + w / 2, 0, h), POLE, rgb(color))]
    if sign:
        y = rng.uniform(2.2, min(3.2, h - 0.5))
        s = rng.uniform(0.6, 0.9)
        sx = x - np.sign(x) * s * 0.5  # signs hang towards the road
        kind = rng.integers(3)
        zs = z - 0.02
        if kind == 0:  # round: red ring, white face
            outer, inner = _ellipse_z(zs, sx, y, s / 2, s / 2), _ellipse_z(zs - 0.01, sx, y, s * 0.35, s * 0.35)
            parts += [Part(outer, SIGN, (210.0, 30.0, 30.0)), Part(inner, None, (240.0, 240.0, 240.0))]
        elif kind == 1:  # square blue with a white symbol
            parts += [Part(_quad_z(zs, sx - s / 2, sx + s / 2, y - s / 2, y + s / 2), SIGN, (30.0, 80.0, 200.0)),
                      Part(_quad_z(zs - 0.01, sx - s / 6, sx + s / 6, y - s / 4, y + s / 4), None,
                           (240.0, 240.0, 240.0))]
        else:  # yellow diamond
            d = np.array([(sx, y + s / 2, zs), (sx + s / 2, y, zs), (sx, y - s / 2, zs), (sx - s / 2, y, zs)])
            parts.append(Part(d, SIGN, (240.0, 200.0, 20.0)))
    return WorldObject(x, z, parts)


def person(rng: np.random.Generator, x: float, z: float) -> WorldObject:
    """A pedestrian (legs, torso, head) walking slowly along the road."""
    h = rng.uniform(1.55, 1.95)
    w = h * 0.26
    cloth = jitter(rng, _CLOTH_COLORS[rng.integers(len(_CLOTH_COLORS))], 20)
    pants = jitter(rng, (45, 45, 60), 20)
    skin = rgb(_SKIN_COLORS[rng.integers(len(_SKIN_COLORS))])
    leg = h * 0.47
    stride = rng.uniform(0.0, 0.15)
    parts = [
        Part(_quad_z(z, x - w * 0.4 - stride, x - w * 0.05 - stride / 2, 0, leg), PERSON, pants),
        Part(_quad_z(z, x + w * 0.05 + stride / 2, x + w * 0.4 + stride, 0, leg), PERSON, pants),
        Part(_quad_z(z, x - w / 2, x + w / 2, leg, h * 0.86), PERSON, cloth),
        Part(_ellipse_z(z, x, h * 0.92, h * 0.07, h * 0.08, 10), PERSON, skin),
    ]
    speed = rng.uniform(-0.12, 0.12)
    return WorldObject(x, z, parts, speed=speed)


def car(rng: np.random.Generator, x: float, z: float, speed: float) -> WorldObject:
    """A car (body, wheels, lights, cabin with windows) moving ``speed`` metres per frame along +z."""
    w, length = rng.uniform(1.65, 1.95), rng.uniform(3.8, 4.8)
    hb, hc = rng.uniform(0.75, 0.95), rng.uniform(1.35, 1.6)
    body = np.clip(_CAR_COLORS[rng.integers(len(_CAR_COLORS))] + rng.uniform(-15, 15, 3), 0, 255)

    def col(k: float) -> Color:
        return rgb(body * k)

    glass = (35.0, 45.0, 60.0)
    x0, x1, z1 = x - w / 2, x + w / 2, z + length
    parts = []
    # lower body: a box; faces culled by their normals, then the cabin on top
    parts.append(Part(_quad_z(z, x0, x1, 0.2, hb), CAR, col(0.9), np.array([0, 0, -1.0])))
    parts.append(Part(_quad_z(z1, x0, x1, 0.2, hb), CAR, col(0.9), np.array([0, 0, 1.0])))
    parts.append(Part(_quad_x(x0, z, z1, 0.2, hb), CAR, col(0.75), np.array([-1.0, 0, 0])))
    parts.append(Part(_quad_x(x1, z, z1, 0.2, hb), CAR, col(0.75), np.array([1.0, 0, 0])))
    parts.append(Part(np.array([(x0, hb, z), (x1, hb, z), (x1, hb, z1), (x0, hb, z1)]), CAR, col(1.0),
                      np.array([0, 1.0, 0])))
    # wheels (label car) below the body, on both sides and ends
    for zw in (z + 0.8, z1 - 0.8):
        for xw in (x0, x1):
            parts.append(Part(_quad_x(xw, zw - 0.35, zw + 0.35, 0.0, 0.55), CAR, (20.0, 20.0, 20.0),
                              np.array([np.sign(xw - x), 0, 0])))
    parts.append(Part(_quad_z(z, x0 + 0.1, x1 - 0.1, 0.0, 0.25), CAR, (20.0, 20.0, 20.0), np.array([0, 0, -1.0])))
    parts.append(Part(_quad_z(z1, x0 + 0.1, x1 - 0.1, 0.0, 0.25), CAR, (20.0, 20.0, 20.0), np.array([0, 0, 1.0])))
    # lights on the end facing the camera
    light = (220.0, 30.0, 30.0) if speed >= 0 else (240.0, 240.0, 210.0)
    for lx in (x0 + 0.1, x1 - 0.45):
        parts.append(Part(_quad_z(z - 0.01, lx, lx + 0.35, hb - 0.3, hb - 0.1), None, light,
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
        parts.append(Part(poly, CAR, glass, n))
    parts.append(Part(np.array([(x0 + inset, hc, cz0), (x1 - inset, hc, cz0), (x1 - inset, hc, cz1),
                                (x0 + inset, hc, cz1)]), CAR, col(1.0), np.array([0, 1.0, 0])))
    return WorldObject(x, z, parts, speed=speed)
