"""Drawing a scene: sky, ground plane, objects back to front, bonnet, then texture, lighting and noise.

Everything is drawn with ``cv2.fillPoly`` into the image and the label map at once, so labels
match pixels exactly. Classes are kept visually distinct (colour and texture cues) so a small
network learns them in minutes on a CPU.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import cv2
import numpy as np

from sfnet_core.data.synthetic_scenes.arguments import check_scene_args
from sfnet_core.data.synthetic_scenes.camera import FAR, NEAR, Camera, camera_at, clip_near
from sfnet_core.data.synthetic_scenes.props import WorldObject, rgb
from sfnet_core.data.synthetic_scenes.train_ids import (
    BUILDING,
    CAR,
    IGNORE,
    PERSON,
    POLE,
    ROAD,
    SIDEWALK,
    SIGN,
    SKY,
    TERRAIN,
    VEGETATION,
)
from sfnet_core.data.synthetic_scenes.world import CHUNK, Scene

__all__ = ["render_scene", "render_sequence", "frame_seed"]

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


def render_scene(seed: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One street scene chosen by ``seed``.

    Returns ``(image, labels)``: RGB uint8 ``(H, W, 3)`` and Cityscapes train ids uint8 ``(H, W)``
    (255 = ignore, used for the ego vehicle's bonnet). Deterministic for a given seed and size.
    """
    check_scene_args(seed, height, width)
    return render_frame(Scene.from_seed(int(seed)), 0, height, width)


def render_sequence(seed: int, num_frames: int, height: int, width: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """A drive through scene ``seed``: ``num_frames`` coherent ``(image, labels)`` frames.

    The camera moves forward 0.4..1 m per frame (about 4..10 m/s at 10 Hz) with gentle steering;
    other cars drive along their lanes and pedestrians walk, so objects grow as they approach.
    Frame 0 equals ``render_scene(seed, height, width)``.
    """
    check_scene_args(seed, height, width)
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")
    scene = Scene.from_seed(int(seed))
    for t in range(num_frames):
        yield render_frame(scene, t, height, width)


def frame_seed(seed: int, index: int) -> int:
    """Scene seed of frame ``index`` of a synthetic dataset with base ``seed`` (well mixed)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def render_frame(scene: Scene, t: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame ``t`` of ``scene``: RGB uint8 (H, W, 3), train ids uint8 (H, W)."""
    cam = camera_at(scene, t, height, width)
    rng = np.random.default_rng([scene.seed, 3, t])
    label = np.full((height, width), SKY, np.uint8)
    img = _sky(scene, height, width, cam, rng)
    _ground(scene, label, img, cam)
    img_u8 = np.ascontiguousarray(np.clip(img, 0, 255).astype(np.uint8))
    _objects(scene, label, img_u8, cam, t, width, height)
    if scene.hood > 0:
        _draw_hood(scene.hood, label, img_u8, height, width)
    return _finish(scene, label, img_u8, rng), label


def _sky(scene: Scene, height: int, width: int, cam: Camera, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) float32: the sky gradient down to the horizon, with clouds (still sky)."""
    ramp = np.clip(np.arange(height, dtype=np.float32) / max(cam.cy, 1.0), 0, 1)[:, None]
    sky = scene.sky_top[None, :] * (1 - ramp) + scene.sky_bottom[None, :] * ramp  # (H, 3)
    img = np.repeat(sky[:, None, :], width, axis=1)
    # clouds: soft bright blobs drawn into the image only (they are still sky)
    for _ in range(rng.integers(0, 4)):
        cx, cyy = rng.uniform(0, width), rng.uniform(0, cam.cy * 0.7)
        ax, ay = rng.uniform(0.05, 0.2) * width, rng.uniform(0.02, 0.06) * height
        cv2.ellipse(img, (int(cx), int(cyy)), (int(ax) + 1, int(ay) + 1), 0, 0, 360,
                    rgb(scene.sky_bottom * 1.08 + 10), -1)
    return img


def _ground(scene: Scene, label: np.ndarray, img: np.ndarray, cam: Camera) -> None:
    """Road, sidewalk and terrain below the horizon, ray-cast per pixel onto the ground plane."""
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
    rh = scene.road_half
    sw = np.where(X > 0, scene.sidewalk[1], scene.sidewalk[-1]).astype(np.float32)
    road = aX < rh
    walk = ~road & (aX < rh + sw)
    # beyond the sidewalk: pavement in town, grass in the country (per chunk and side)
    k = np.floor(Z / CHUNK).astype(np.int64)
    k0, k1 = int(k.min()), int(k.max())
    urban_lut = np.array([[scene.side_urban(kk, sd) for sd in (-1, 1)] for kk in range(k0, k1 + 1)])
    urban = urban_lut[k - k0, (X > 0).astype(np.int64)]
    walk |= ~road & urban
    cls = np.where(road, ROAD, np.where(walk, SIDEWALK, TERRAIN)).astype(np.uint8)
    label[first:] = cls
    colors = np.stack([scene.road_color, scene.sidewalk_color, scene.terrain_color])
    out = colors[np.where(road, 0, np.where(walk, 1, 2))]
    # world-anchored patterns: lane markings, kerb, paving joints (coherent as the car moves)
    lane = np.zeros_like(road)
    for i in range(-scene.lanes_per_dir + 1, scene.lanes_per_dir):
        dashed = (np.mod(Z, 9.0) < 3.0) if i != 0 or scene.lanes_per_dir > 1 else np.ones_like(road)
        lane |= (np.abs(X - i * scene.lane_w) < 0.07) & dashed
    lane |= np.abs(aX - (scene.lane_w * scene.lanes_per_dir - (0.0 if scene.parking else 0.25))) < 0.06
    out[lane & road] = (225.0, 225.0, 215.0)
    joints = walk & ((np.mod(X, 0.6) < 0.05) | (np.mod(Z, 0.6) < 0.05))
    out[joints] *= 0.82
    kerb = walk & (aX < rh + 0.15)
    out[kerb] = (175.0, 175.0, 175.0)
    img[first:] = out


def _visible_objects(scene: Scene, cam: Camera, t: int) -> list[tuple[WorldObject, float]]:
    """``(object, z shift at t)`` of the objects that can be in view, in drawing order: the
    backdrop (facades, tree walls) far to near, then everything else far to near."""
    # chunks whose objects can be in view now (moving ones may come from further away)
    reach = 1.2 * max(scene.speed, 1.0) * t
    k_lo = int(math.floor((cam.z - 20 - reach) / CHUNK))
    k_hi = int(math.floor((cam.z + FAR + reach) / CHUNK))
    backdrop, inner = [], []
    for k in range(k_lo, k_hi + 1):
        static_ok = cam.z - 40 <= (k + 1) * CHUNK and k * CHUNK <= cam.z + FAR
        for obj in scene.chunk(k):
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
    return [(obj, dz) for _, obj, dz in backdrop + inner]


def _objects(scene: Scene, label: np.ndarray, img: np.ndarray, cam: Camera, t: int, width: int, height: int) -> None:
    """Project every visible object's parts (one numpy op for all vertices) and fill them back to front."""
    order = _visible_objects(scene, cam, t)
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
        pc, uv, depth = pc_all[start:start + n], uv_all[start:start + n], zc[start:start + n]
        start += n
        if depth.max() < NEAR or depth.min() > FAR:
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
                keep = (depth[lo:hi].reshape(-1, g) >= NEAR).all(axis=1)
                if keep.any():
                    polys = np.round(uv[lo:hi].reshape(-1, g, 2)[keep] * _SCALE).astype(np.int32)
                    cv2.fillPoly(img, list(polys), part.color, cv2.LINE_8, _SHIFT)
                continue
            if depth[lo:hi].min() < NEAR:
                clipped = clip_near(pc[lo:hi])
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


def _draw_hood(hood: float, label: np.ndarray, img: np.ndarray, height: int, width: int) -> None:
    """The ego vehicle's bonnet, ``hood`` of the image height at its top: IGNORE in the labels."""
    top = height * (1 - hood)
    xs = np.linspace(-0.1, 1.1, 24) * width
    ys = top + (height * hood * 0.6) * ((xs / width - 0.5) * 2) ** 2
    poly = np.concatenate([np.stack([xs, ys], 1), [(1.1 * width, height + 2), (-0.1 * width, height + 2)]])
    pts = [np.round(poly * _SCALE).astype(np.int32)]
    cv2.fillPoly(img, pts, (40, 40, 45), cv2.LINE_8, _SHIFT)
    cv2.fillPoly(label, pts, IGNORE, cv2.LINE_8, _SHIFT)


def _finish(scene: Scene, label: np.ndarray, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-class texture, optional blur, global lighting and sensor noise on the flat-shaded image."""
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
    if scene.blur:
        out = cv2.GaussianBlur(out, (3, 3), 0.8)
    # global lighting: exposure, white balance and tone curve as one per-channel lookup
    ramp = np.power(np.arange(256, dtype=np.float32) / 255.0, scene.gamma)[:, None] * scene.cast[None, :]
    lut = np.clip(ramp * 255.0 * scene.gain + 0.5, 0, 255).astype(np.uint8).reshape(256, 1, 3)
    out = cv2.LUT(out, lut)
    noise = rng.standard_normal((height, width), dtype=np.float32) * scene.noise_sigma  # sensor noise
    return cv2.add(out, cv2.merge([noise, noise, noise]), dtype=cv2.CV_8U)
