"""One seed's world: the road layout, palette and lighting (``Scene``), and the objects along
the road, generated chunk by chunk.

The world is cut into chunks of ``CHUNK`` metres along the road, each generated from its own
``(seed, chunk)`` random stream, so a frame never depends on how long the sequence is.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sfnet_core.data.synthetic_scenes import props
from sfnet_core.data.synthetic_scenes.props import WorldObject, jitter

__all__ = ["CHUNK", "Scene"]

CHUNK = 40.0  # metres of road generated from one random stream


@dataclass
class Scene:
    """Per-seed constants: camera, road geometry, palette, lighting; and the world's chunks."""

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
    _chunks: dict[int, list[WorldObject]] = field(default_factory=dict)

    @property
    def road_half(self) -> float:
        return self.lane_w * self.lanes_per_dir + self.parking

    @classmethod
    def from_seed(cls, seed: int) -> Scene:
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
            road_color=np.array(jitter(rng, (85, 85, 90), 12), np.float32),
            sidewalk_color=np.array(jitter(rng, (185, 160, 170), 15), np.float32),
            terrain_color=np.array(jitter(rng, (150, 170, 80), 18), np.float32),
            veg_color=np.array(jitter(rng, (55, 100, 40), 15), np.float32),
            sky_top=np.array(jitter(rng, sky_top, 15), np.float32),
            sky_bottom=np.array(jitter(rng, sky_bottom, 10), np.float32),
            pole_color=np.array(jitter(rng, (120, 125, 120), 25), np.float32),
            shade={sun: 1.0, -sun: float(rng.uniform(0.55, 0.85))},
            gain=float(rng.uniform(0.6, 1.3)),
            cast=rng.uniform(0.9, 1.1, 3).astype(np.float32),
            gamma=float(rng.uniform(0.8, 1.25)),
            noise_sigma=float(rng.uniform(1.0, 6.0)),
            blur=bool(rng.random() < 0.4),
            hood=float(rng.uniform(0.06, 0.14)) if rng.random() < 0.3 else 0.0,
        )

    def side_urban(self, k: int, side: int) -> bool:
        """Whether ``side`` (-1 left, +1 right) of chunk ``k`` is town (pavement, buildings) or country."""
        return bool(np.random.default_rng([self.seed, 1, k + 10_000, side + 2]).random() < self.urban_prob[side])

    def chunk(self, k: int) -> list[WorldObject]:
        """The objects of chunk ``k`` (z in ``[k, k + 1) * CHUNK`` at t = 0), generated once."""
        objs = self._chunks.get(k)
        if objs is None:
            if len(self._chunks) > 64:  # long sequences: drop chunks far behind
                self._chunks.pop(min(self._chunks))
            objs = self._chunks[k] = self._make_chunk(k)
        return objs

    def _make_chunk(self, k: int) -> list[WorldObject]:
        rng = np.random.default_rng([self.seed, 2, k + 10_000])
        z0, z1 = k * CHUNK, (k + 1) * CHUNK
        objs: list[WorldObject] = []
        rh = self.road_half
        for side in (-1, 1):
            edge = rh + self.sidewalk[side]
            if self.side_urban(k, side):
                objs += props.buildings(rng, side, edge, z0, z1, self.shade[side])
                if rng.random() < 0.3:
                    objs.append(props.tree(rng, side * (edge - 0.8), rng.uniform(z0, z1), self.veg_color))
            else:
                objs += props.tree_wall(rng, side, edge, z0, z1, self.veg_color, self.shade[side])
            z = z0 + rng.uniform(0, 15)
            while z < z1:
                objs.append(props.pole(rng, side * (rh + 0.35), z, rng.random() < 0.55, self.pole_color))
                z += rng.uniform(12, 30)
            for _ in range(rng.poisson(1.0)):
                objs.append(props.person(rng, side * (rh + rng.uniform(0.5, self.sidewalk[side] - 0.3)),
                                         rng.uniform(z0, z1)))
        lanes = self.lanes_per_dir
        ego_lane = int(self.cam_x // self.lane_w)
        for _ in range(rng.poisson(0.8)):  # same direction, moving with traffic
            lane = int(rng.integers(0, lanes))
            x, z = self.lane_w * (lane + 0.5) + rng.uniform(-0.3, 0.3), rng.uniform(z0, z1)
            if lane == ego_lane:  # keeps its distance to the ego car, never drives through it
                objs.append(props.car(rng, x, z + 13 if -6 < z < 7 else z, self.speed))
            else:
                objs.append(props.car(rng, x, z, self.speed * rng.uniform(0.6, 1.2)))
        for _ in range(rng.poisson(0.8)):  # oncoming
            x = -self.lane_w * (rng.integers(0, lanes) + 0.5) + rng.uniform(-0.3, 0.3)
            objs.append(props.car(rng, x, rng.uniform(z0, z1), -rng.uniform(0.3, 1.0)))
        for _ in range(rng.poisson(1.2) if self.parking else 0):  # parked at the kerb
            side = 1 if rng.random() < 0.5 else -1
            objs.append(props.car(rng, side * (rh - self.parking / 2), rng.uniform(z0, z1), 0.0))
        if k == 0:  # the first frame always shows every class (a car ahead, a person, a sign)
            x = self.lane_w * (ego_lane + 0.5)
            objs.append(props.car(rng, x, rng.uniform(10, 30), self.speed))
            side = 1 if rng.random() < 0.5 else -1
            objs.append(props.person(rng, side * (rh + min(1.0, self.sidewalk[side] / 2)), rng.uniform(12, 25)))
            objs.append(props.pole(rng, -side * (rh + 0.35), rng.uniform(10, 22), True, self.pole_color))
        return objs
