"""sfnet_ros.conversions against real rclpy and rosbags message classes."""
from __future__ import annotations

import array
import sys
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from builtin_interfaces.msg import Time
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from sfnet_ros.conversions import (
    SUPPORTED_ENCODINGS,
    ImageConversionError,
    compressed_to_rgb,
    encoding_info,
    image_to_numpy,
    image_to_rgb,
    numpy_to_image,
    rgb_to_compressed,
)

pytestmark = pytest.mark.ros_api  # ROS messages and rclpy: run on every distribution CI tests

TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
BagImage = TYPESTORE.types["sensor_msgs/msg/Image"]
BagCompressed = TYPESTORE.types["sensor_msgs/msg/CompressedImage"]
BagHeader = TYPESTORE.types["std_msgs/msg/Header"]
BagTime = TYPESTORE.types["builtin_interfaces/msg/Time"]

H, W = 48, 64
RNG = np.random.default_rng(1234)

MSG_CLASSES = {"rclpy": Image, "rosbags": BagImage}


SEMI_PLANAR_ROWS = {"nv12": 1.5, "nv21": 1.5, "nv24": 3}  # array rows per image row (OpenCV's layout)


def random_image(encoding: str, h: int = H, w: int = W) -> np.ndarray:
    channels, dtype = encoding_info(encoding)
    shape = (h, w) if channels == 1 else (h, w, channels)
    if encoding in SEMI_PLANAR_ROWS:
        shape = (int(h * SEMI_PLANAR_ROWS[encoding]), w)
    if dtype.kind == "f":
        return RNG.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


def raw_msg(encoding: str, height: int, width: int, step: int, data, is_bigendian: int = 0):
    """A duck-typed Image, for layouts cv2_to_imgmsg would never produce."""
    return SimpleNamespace(encoding=encoding, height=height, width=width, step=step, data=data,
                           is_bigendian=is_bigendian)


def padded_bytes(image: np.ndarray, pad: int, fill: int = 0xEE) -> tuple[bytes, int]:
    """Row-major bytes of ``image`` with ``pad`` garbage bytes after every row."""
    rows = image.reshape(image.shape[0], -1).view(np.uint8).reshape(image.shape[0], -1)
    step = rows.shape[1] + pad
    out = np.full((image.shape[0], step), fill, np.uint8)
    out[:, : rows.shape[1]] = rows
    return out.tobytes(), step


# --------------------------------------------------------------------------- encodings / basics


def test_encoding_info_and_supported_list():
    assert encoding_info("rgb8") == (3, np.dtype(np.uint8))
    assert encoding_info("mono16") == (1, np.dtype(np.uint16))
    assert encoding_info("yuv422") == (2, np.dtype(np.uint8))
    assert encoding_info("32FC1") == (1, np.dtype(np.float32))
    assert encoding_info("16SC3") == (3, np.dtype(np.int16))
    assert isinstance(SUPPORTED_ENCODINGS, tuple)
    for name in ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "yuv422", "yuv422_yuy2", "uyvy", "yuyv",
                 "nv12", "nv21", "nv24", "bayer_rggb8", "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8"):
        assert name in SUPPORTED_ENCODINGS
    with pytest.raises(ImageConversionError, match=r"'nv16'.*rgb8"):
        encoding_info("nv16")


@pytest.mark.parametrize("cls_name", sorted(MSG_CLASSES))
@pytest.mark.parametrize("encoding", SUPPORTED_ENCODINGS + ("8UC3", "32FC1", "16SC2", "64FC4"))
def test_round_trip_every_encoding(cls_name, encoding):
    image = random_image(encoding)
    msg = numpy_to_image(image, encoding, msg_cls=MSG_CLASSES[cls_name])
    assert isinstance(msg, MSG_CLASSES[cls_name])
    channels, dtype = encoding_info(encoding)
    assert (msg.height, msg.width, msg.encoding) == (H, W, encoding)
    assert msg.step == (W if encoding in SEMI_PLANAR_ROWS else W * channels * dtype.itemsize)
    assert msg.is_bigendian == (sys.byteorder == "big")
    assert len(msg.data) == image.nbytes
    back = image_to_numpy(msg)
    assert back.dtype == dtype and back.shape == image.shape
    np.testing.assert_array_equal(back, image)
    if encoding in SUPPORTED_ENCODINGS:
        rgb = image_to_rgb(msg)
        assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8


def test_numpy_to_image_does_not_alias_the_array():
    image = random_image("rgb8")
    for cls in MSG_CLASSES.values():
        msg = numpy_to_image(image, "rgb8", msg_cls=cls)
        assert not np.shares_memory(image_to_numpy(msg), image)


def test_numpy_to_image_non_contiguous_and_passthrough():
    image = random_image("rgb8", 32, 80)[:, ::2]  # strided input must be packed
    msg = numpy_to_image(image, "passthrough")
    assert msg.encoding == "8UC3" and msg.step == 40 * 3
    np.testing.assert_array_equal(image_to_numpy(msg), image)
    mono = random_image("mono8")[..., None]  # (H, W, 1) is a one-channel image
    assert numpy_to_image(mono, "mono8").step == W


class CheckedImage(Image):
    """rclpy Image with field checks on, as Humble always has them (its setter differs)."""

    def __init__(self, **kwargs):
        super().__init__(check_fields=True, **kwargs)


def test_rclpy_with_field_checks_on():
    image = random_image("rgba8")
    msg = numpy_to_image(array=image, encoding="rgba8", msg_cls=CheckedImage)
    assert msg._check_fields and isinstance(msg.data, array.array)
    np.testing.assert_array_equal(image_to_numpy(msg), image)
    default = numpy_to_image(image, "rgba8")
    assert bytes(default.data) == bytes(msg.data)


def test_rclpy_message_survives_serialization():
    image = random_image("bgr8")
    header = Header(stamp=Time(sec=12, nanosec=345), frame_id="cam_front")
    msg = numpy_to_image(image, "bgr8", header=header)
    back = deserialize_message(serialize_message(msg), Image)
    assert back.header.frame_id == "cam_front" and back.header.stamp.sec == 12
    np.testing.assert_array_equal(image_to_numpy(back), image)
    np.testing.assert_array_equal(image_to_rgb(back), image[..., ::-1])


def test_rosbags_message_survives_cdr_and_default_header():
    image = random_image("rgb8")
    msg = numpy_to_image(image, "rgb8", msg_cls=BagImage)
    assert msg.header.frame_id == "" and msg.header.stamp.sec == 0
    raw = TYPESTORE.serialize_cdr(msg, BagImage.__msgtype__)
    back = TYPESTORE.deserialize_cdr(raw, BagImage.__msgtype__)
    assert isinstance(back.data, np.ndarray)
    np.testing.assert_array_equal(image_to_rgb(back), image)
    header = BagHeader(stamp=BagTime(sec=3, nanosec=4), frame_id="cam_left")
    assert numpy_to_image(image, "rgb8", header=header, msg_cls=BagImage).header is header


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "list", "array", "ndarray"])
def test_data_container_types(kind):
    image = random_image("rgb8", 6, 10)
    raw = image.tobytes()
    data = {
        "bytes": raw, "bytearray": bytearray(raw), "memoryview": memoryview(raw),
        "list": list(raw), "array": array.array("B", raw), "ndarray": np.frombuffer(raw, np.uint8),
    }[kind]
    np.testing.assert_array_equal(image_to_rgb(raw_msg("rgb8", 6, 10, 30, data)), image)


# --------------------------------------------------------------------------- zero copy / padding


@pytest.mark.parametrize("pad", [0, 13])
def test_rgb8_is_zero_copy_on_rclpy_message(pad):
    image = random_image("rgb8")
    raw, step = padded_bytes(image, pad)
    msg = Image(height=H, width=W, encoding="rgb8", step=step)
    msg.data = array.array("B", raw)
    rgb = image_to_rgb(msg)
    np.testing.assert_array_equal(rgb, image)
    assert np.shares_memory(rgb, np.frombuffer(msg.data, np.uint8))
    assert rgb.flags.c_contiguous == (pad == 0)
    msg.data[0] = (int(msg.data[0]) + 1) % 256  # a view, not a snapshot
    assert rgb[0, 0, 0] == msg.data[0]


def test_zero_copy_on_rosbags_message():
    image = random_image("rgb8")
    raw, step = padded_bytes(image, 4)
    msg = BagImage(header=BagHeader(stamp=BagTime(sec=0, nanosec=0), frame_id=""), height=H,
                   width=W, encoding="rgb8", is_bigendian=0, step=step,
                   data=np.frombuffer(raw, np.uint8).copy())
    view = image_to_numpy(msg)
    np.testing.assert_array_equal(view, image)
    assert np.shares_memory(view, msg.data)


@pytest.mark.parametrize("encoding", ["bgr8", "mono8", "rgba8", "mono16", "bayer_grbg8", "yuv422"])
def test_padded_rows_for_other_encodings(encoding):
    image = random_image(encoding)
    raw, step = padded_bytes(image, 6)
    msg = raw_msg(encoding, H, W, step, raw, is_bigendian=int(sys.byteorder == "big"))
    np.testing.assert_array_equal(image_to_numpy(msg), image)
    packed = numpy_to_image(image, encoding)
    np.testing.assert_array_equal(image_to_rgb(msg), image_to_rgb(packed))


# --------------------------------------------------------------------------- colour conversions


def test_simple_colour_orders():
    rgb = random_image("rgb8")
    alpha = random_image("mono8")
    cases = {
        "bgr8": rgb[..., ::-1],
        "rgba8": np.dstack([rgb, alpha]),
        "bgra8": np.dstack([rgb[..., ::-1], alpha]),
    }
    for encoding, image in cases.items():
        np.testing.assert_array_equal(image_to_rgb(numpy_to_image(image, encoding)), rgb)
    mono = random_image("mono8")
    np.testing.assert_array_equal(image_to_rgb(numpy_to_image(mono, "mono8")),
                                  np.repeat(mono[..., None], 3, axis=2))


def test_16bit_scaled_like_cv_bridge():
    values = np.array([[0, 128, 129, 257, 32767, 65535]], np.uint16)
    expected = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    mono = image_to_rgb(numpy_to_image(values, "mono16"))
    np.testing.assert_array_equal(mono, np.repeat(expected[..., None], 3, axis=2))
    rgb16 = np.dstack([values, values[:, ::-1], np.full_like(values, 257)])
    exp_rgb = np.dstack([expected, expected[:, ::-1], np.full_like(expected, 1)])
    np.testing.assert_array_equal(image_to_rgb(numpy_to_image(rgb16, "rgb16")), exp_rgb)
    np.testing.assert_array_equal(
        image_to_rgb(numpy_to_image(np.ascontiguousarray(rgb16[..., ::-1]), "bgr16")), exp_rgb)


@pytest.mark.parametrize("swap_order", [False, True])
def test_16bit_endianness(swap_order):
    values = random_image("mono16")
    big = swap_order != (sys.byteorder == "big")  # the non-native order when swap_order
    raw = values.astype(">u2" if big else "<u2").tobytes()
    msg = raw_msg("mono16", H, W, W * 2, raw, is_bigendian=int(big))
    out = image_to_numpy(msg)
    assert out.dtype == np.dtype(np.uint16) and out.dtype.isnative
    np.testing.assert_array_equal(out, values)
    rgb16 = random_image("rgb16")
    raw, step = padded_bytes(rgb16.astype(">u2" if big else "<u2"), 2)
    out = image_to_numpy(raw_msg("rgb16", H, W, step, raw, is_bigendian=int(big)))
    np.testing.assert_array_equal(out, rgb16)


def test_numpy_to_image_keeps_explicit_byte_order():
    values = random_image("mono16")
    for order, flag in ((">", 1), ("<", 0)):
        msg = numpy_to_image(values.astype(f"{order}u2"), "mono16")
        assert msg.is_bigendian == flag
        assert bytes(msg.data) == values.astype(f"{order}u2").tobytes()
        np.testing.assert_array_equal(image_to_numpy(msg), values)


# ROS names the 2x2 block at the image origin, row by row.
BAYER_PATTERNS = {"rggb": "RGGB", "bggr": "BGGR", "gbrg": "GBRG", "grbg": "GRBG"}


def quadrant_image(h: int = 64, w: int = 64) -> np.ndarray:
    colours = np.array([[220, 40, 90], [30, 200, 160], [250, 240, 20], [60, 70, 230]], np.uint8)
    img = np.empty((h, w, 3), np.uint8)
    img[: h // 2, : w // 2] = colours[0]
    img[: h // 2, w // 2:] = colours[1]
    img[h // 2:, : w // 2] = colours[2]
    img[h // 2:, w // 2:] = colours[3]
    return img


def mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    channel = {"R": 0, "G": 1, "B": 2}
    out = np.empty(rgb.shape[:2], rgb.dtype)
    for dy in range(2):
        for dx in range(2):
            out[dy::2, dx::2] = rgb[dy::2, dx::2, channel[pattern[2 * dy + dx]]]
    return out


def flat_interior(image: np.ndarray, margin: int = 4) -> np.ndarray:
    h, w = image.shape[:2]
    keep = np.ones((h, w), bool)
    keep[:margin], keep[-margin:], keep[:, :margin], keep[:, -margin:] = False, False, False, False
    keep[h // 2 - margin: h // 2 + margin] = False
    keep[:, w // 2 - margin: w // 2 + margin] = False
    return keep


@pytest.mark.parametrize("name", sorted(BAYER_PATTERNS))
def test_bayer_demosaic_matches_ros_pattern(name):
    truth = quadrant_image()
    keep = flat_interior(truth)
    raw = mosaic(truth, BAYER_PATTERNS[name])
    rgb = image_to_rgb(numpy_to_image(raw, f"bayer_{name}8"))
    diff = np.abs(rgb.astype(int) - truth)[keep]
    assert diff.max() <= 2, f"bayer_{name}8: max error {diff.max()}"
    # 16-bit variant: same mosaic scaled to the full range, then reduced back to 8 bit.
    rgb16 = image_to_rgb(numpy_to_image(raw.astype(np.uint16) * 257, f"bayer_{name}16"))
    assert np.abs(rgb16.astype(int) - truth)[keep].max() <= 2
    # The check discriminates: every other pattern label gives a clearly wrong colour.
    for other in BAYER_PATTERNS:
        if other != name:
            wrong = image_to_rgb(numpy_to_image(raw, f"bayer_{other}8"))
            assert np.abs(wrong.astype(int) - truth)[keep].max() > 50


def yuv_bt601(rgb: np.ndarray) -> np.ndarray:
    """Limited-range BT.601 Y, U, V planes of an RGB image, float."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    return np.stack([y, u, v], axis=-1)


def pack_422(rgb: np.ndarray, order: str) -> np.ndarray:
    """(H, W, 2) packed 4:2:2 bytes; order 'UYVY' or 'YUYV'; chroma averaged over pixel pairs."""
    yuv = yuv_bt601(rgb)
    chroma = (yuv[:, 0::2, 1:] + yuv[:, 1::2, 1:]) / 2
    out = np.empty(rgb.shape[:2] + (2,), np.float64)
    y_slot, c_slot = (1, 0) if order == "UYVY" else (0, 1)
    out[..., y_slot] = yuv[..., 0]
    out[:, 0::2, c_slot] = chroma[..., 0]
    out[:, 1::2, c_slot] = chroma[..., 1]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("encoding,order", [("yuv422", "UYVY"), ("yuv422_yuy2", "YUYV")])
def test_yuv422_decodes_known_image(encoding, order):
    truth = np.repeat(quadrant_image(16, 16), 1, axis=0)
    packed = pack_422(truth, order)
    if hasattr(cv2, "COLOR_RGB2YUV_UYVY"):  # OpenCV >= 4.7 can pack too: same bytes
        code = cv2.COLOR_RGB2YUV_UYVY if order == "UYVY" else cv2.COLOR_RGB2YUV_YUYV
        assert np.abs(cv2.cvtColor(truth, code).astype(int) - packed).max() <= 1
    msg = numpy_to_image(packed, encoding)
    assert image_to_numpy(msg).shape == (16, 16, 2)
    rgb = image_to_rgb(msg)
    assert np.abs(rgb.astype(int) - truth).max() <= 3
    other = "yuv422_yuy2" if encoding == "yuv422" else "yuv422"
    assert np.abs(image_to_rgb(numpy_to_image(packed, other)).astype(int) - truth).max() > 50


@pytest.mark.parametrize("ros2_name,alias,code", [("uyvy", "yuv422", cv2.COLOR_YUV2RGB_UYVY),
                                                 ("yuyv", "yuv422_yuy2", cv2.COLOR_YUV2RGB_YUYV)])
def test_ros2_422_names_equal_opencv_and_the_deprecated_alias(ros2_name, alias, code):
    truth = smooth_rgb(32, 48)
    packed = pack_422(truth, ros2_name.upper())
    if hasattr(cv2, "COLOR_RGB2YUV_UYVY"):  # OpenCV >= 4.7 packs too: round trip through its own bytes
        own = cv2.cvtColor(truth, cv2.COLOR_RGB2YUV_UYVY if ros2_name == "uyvy" else cv2.COLOR_RGB2YUV_YUYV)
        assert np.abs(image_to_rgb(numpy_to_image(own, ros2_name)).astype(int) - truth).max() <= 4
    rgb = image_to_rgb(numpy_to_image(packed, ros2_name))
    np.testing.assert_array_equal(rgb, cv2.cvtColor(packed, code))
    np.testing.assert_array_equal(rgb, image_to_rgb(numpy_to_image(packed, alias)))
    with pytest.raises(ImageConversionError, match="even width"):
        image_to_rgb(raw_msg(ros2_name, 2, 3, 6, bytes(12)))


def i420_planes(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y (H, W), U and V (H/2, W/2) of an RGB image, by OpenCV's own RGB -> I420."""
    h, w = rgb.shape[:2]
    i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
    quarter = (h // 2) * (w // 2)
    chroma = i420[h:].reshape(-1)
    return i420[:h], chroma[:quarter].reshape(h // 2, w // 2), chroma[quarter:].reshape(h // 2, w // 2)


def semi_planar(y: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """OpenCV's (rows, W) single-plane layout: Y rows, then the two chroma planes interleaved."""
    chroma = np.stack([first, second], axis=-1).reshape(first.shape[0], -1)
    return np.concatenate([y, chroma.reshape(-1, y.shape[1])], axis=0)


@pytest.mark.parametrize("encoding,code", [("nv21", cv2.COLOR_YUV2RGB_NV21), ("nv12", cv2.COLOR_YUV2RGB_NV12)])
def test_nv21_nv12_equal_opencv(encoding, code):
    truth = smooth_rgb(32, 48)
    y, u, v = i420_planes(truth)
    planes = semi_planar(y, v, u) if encoding == "nv21" else semi_planar(y, u, v)
    msg = numpy_to_image(planes, encoding)
    assert (msg.height, msg.width, msg.step, len(msg.data)) == (32, 48, 48, 32 * 48 * 3 // 2)
    rgb = image_to_rgb(msg)
    np.testing.assert_array_equal(rgb, cv2.cvtColor(planes, code))
    assert np.abs(rgb.astype(int) - truth).mean() < 3  # the round trip through OpenCV's I420
    # U and V the wrong way round gives clearly wrong colours: the test tells the two apart.
    other = "nv12" if encoding == "nv21" else "nv21"
    assert np.abs(image_to_rgb(numpy_to_image(planes, other)).astype(int) - truth).mean() > 10


def v4l2_bytes(y: np.ndarray, chroma: np.ndarray, step: int, chroma_step: int) -> bytes:
    """Semi-planar bytes with padded rows: Y rows of ``step``, chroma rows of ``chroma_step``."""
    out = []
    for plane, stride in ((y, step), (chroma, chroma_step)):
        rows = np.full((plane.shape[0], stride), 0xEE, np.uint8)
        rows[:, : plane.shape[1]] = plane
        out.append(rows.tobytes())
    return b"".join(out)


@pytest.mark.parametrize("encoding", ["nv21", "nv24"])
def test_semi_planar_padded_rows(encoding):
    h, w, pad = 16, 24, 8
    planes = random_image(encoding, h, w)
    y, chroma = planes[:h], planes[h:].reshape(h if encoding == "nv24" else h // 2, -1)
    step = w + pad
    chroma_step = 2 * step if encoding == "nv24" else step  # V4L2: chroma stride follows the luma's
    msg = raw_msg(encoding, h, w, step, v4l2_bytes(y, chroma, step, chroma_step))
    np.testing.assert_array_equal(image_to_numpy(msg), planes)
    np.testing.assert_array_equal(image_to_rgb(msg), image_to_rgb(numpy_to_image(planes, encoding)))
    # Packed planes are accepted whatever step claims (publishers disagree on it for these).
    packed = raw_msg(encoding, h, w, 2 * w, planes.tobytes())
    np.testing.assert_array_equal(image_to_rgb(packed), image_to_rgb(msg))
    expected = rf"data length {planes.size - 1} does not match .*{planes.size} \(packed planes\)"
    with pytest.raises(ImageConversionError, match=expected):
        image_to_rgb(raw_msg(encoding, h, w, step, planes.tobytes()[:-1]))
    with pytest.raises(ImageConversionError, match="smaller than the luma row"):
        image_to_rgb(raw_msg(encoding, h, w, w - 1, planes.tobytes()))


def test_nv21_needs_even_size():
    with pytest.raises(ImageConversionError, match="even width and height"):
        image_to_rgb(raw_msg("nv21", 3, 4, 4, bytes(4 * 3 * 3 // 2)))
    with pytest.raises(ImageConversionError, match="not the layout of an image"):
        numpy_to_image(np.zeros((10, 4), np.uint8), "nv21")
    with pytest.raises(ImageConversionError, match="2-D uint8"):
        numpy_to_image(np.zeros((6, 4, 2), np.uint8), "nv24")


def test_nv24_equals_opencv_nv21_where_the_chroma_agrees():
    """OpenCV has no NV24 code: with chroma constant over 2x2 blocks, NV24 must give exactly what
    OpenCV's NV21 conversion gives for the subsampled chroma (same BT.601 integer arithmetic)."""
    truth = smooth_rgb(32, 48)
    y, u, v = i420_planes(truth)
    nv21 = semi_planar(y, v, u)
    full_u, full_v = (np.repeat(np.repeat(c, 2, axis=0), 2, axis=1) for c in (u, v))
    nv24 = semi_planar(y, full_u, full_v)
    assert nv24.shape == (3 * 32, 48)
    msg = numpy_to_image(nv24, "nv24")
    assert (msg.height, msg.width, msg.step, len(msg.data)) == (32, 48, 48, 3 * 32 * 48)
    np.testing.assert_array_equal(image_to_rgb(msg), cv2.cvtColor(nv21, cv2.COLOR_YUV2RGB_NV21))


def test_nv24_keeps_full_resolution_chroma():
    """Per-pixel chroma (which 4:2:0 cannot carry) survives: compared with the BT.601 limited-range
    formula in floating point, and a one-pixel checkerboard of colours comes back as one."""
    truth = quadrant_image(16, 16)
    truth[1::2, ::2] = truth[::2, 1::2] = [30, 200, 160]  # neighbours of different colour
    yuv = yuv_bt601(truth)
    planes = semi_planar(*(np.clip(np.round(yuv[..., i]), 0, 255).astype(np.uint8) for i in range(3)))
    rgb = image_to_rgb(numpy_to_image(planes, "nv24"))
    assert np.abs(rgb.astype(int) - truth).max() <= 3
    assert (rgb[1, 0] != rgb[0, 0]).any()


# --------------------------------------------------------------------------- error cases


def test_unknown_encoding_is_named():
    msg = raw_msg("rgb9", 2, 2, 6, bytes(12))
    with pytest.raises(ImageConversionError, match=r"'rgb9'.*supported: rgb8, bgr8"):
        image_to_numpy(msg)
    with pytest.raises(ImageConversionError, match="'rgb9'"):
        image_to_rgb(msg)
    with pytest.raises(ImageConversionError, match="no colour information"):
        image_to_rgb(raw_msg("32FC1", 2, 2, 8, bytes(16)))


def test_data_length_mismatch_gives_both_numbers():
    image = random_image("rgb8")
    msg = numpy_to_image(image, "rgb8")
    msg.data = msg.data[:-1]  # truncated by one byte
    with pytest.raises(ImageConversionError, match=rf"data length {H * W * 3 - 1} .* {H * W * 3}"):
        image_to_rgb(msg)
    longer = raw_msg("rgb8", H, W, W * 3, image.tobytes() + b"\0")
    with pytest.raises(ImageConversionError, match="does not match step x height"):
        image_to_numpy(longer)
    short_bag = raw_msg("mono16", 4, 4, 8, np.zeros(31, np.uint8))
    with pytest.raises(ImageConversionError, match="data length 31"):
        image_to_numpy(short_bag)


def test_step_smaller_than_row():
    with pytest.raises(ImageConversionError, match=r"step 11 is smaller than .* = 12"):
        image_to_numpy(raw_msg("rgb8", 3, 4, 11, bytes(33)))
    with pytest.raises(ImageConversionError, match="step 6 is smaller"):
        image_to_numpy(raw_msg("mono16", 3, 4, 6, bytes(18)))


@pytest.mark.parametrize("encoding,pad", [("mono16", 1), ("rgb16", 3), ("bayer_rggb16", 5), ("16UC1", 1),
                                          ("32FC1", 2)])
def test_step_not_a_multiple_of_the_element_size(encoding, pad):
    """cv_bridge wraps the data as cv::Mat(height, width, type, data, step), whose constructor
    raises "Step must be a multiple of esz1" here (OpenCV's Python binding would silently copy,
    so the refusal cannot be shown from Python); reading it misaligned gave garbage before."""
    image = random_image(encoding, 4, 5)
    raw, step = padded_bytes(image, pad)
    msg = raw_msg(encoding, 4, 5, step, raw)
    itemsize = image.dtype.itemsize
    with pytest.raises(ImageConversionError,
                       match=rf"step {step} is not a multiple of the element size {itemsize} bytes"):
        image_to_numpy(msg)
    if encoding in SUPPORTED_ENCODINGS:  # the node's path (generic types stop earlier: no colour)
        with pytest.raises(ImageConversionError, match="not a multiple"):
            image_to_rgb(msg)
    # A step that is a multiple (padded by whole elements) is fine.
    raw, step = padded_bytes(image, itemsize * 2)
    np.testing.assert_array_equal(image_to_numpy(raw_msg(encoding, 4, 5, step, raw)), image)


def test_odd_step_is_fine_for_8_bit():
    image = random_image("rgb8", 4, 6)
    raw, step = padded_bytes(image, 1)
    assert step % 2 == 1
    np.testing.assert_array_equal(image_to_rgb(raw_msg("rgb8", 4, 6, step, raw)), image)


@pytest.mark.parametrize("height,width", [(0, 4), (4, 0), (0, 0)])
def test_zero_size_image(height, width):
    with pytest.raises(ImageConversionError, match="zero-size"):
        image_to_rgb(raw_msg("rgb8", height, width, width * 3, b""))
    with pytest.raises(ImageConversionError, match="zero-size"):
        numpy_to_image(np.zeros((height, width, 3), np.uint8), "rgb8")


def test_bad_data_values_and_types():
    with pytest.raises(ImageConversionError, match="0..255"):
        image_to_numpy(raw_msg("mono8", 1, 2, 2, [1, 300]))
    with pytest.raises(ImageConversionError, match="bytes-like"):
        image_to_numpy(raw_msg("mono8", 1, 2, 2, "ab"))


def test_conversion_specific_errors():
    with pytest.raises(ImageConversionError, match="even width"):
        image_to_rgb(raw_msg("yuv422", 2, 3, 6, bytes(12)))
    with pytest.raises(ImageConversionError, match="2x2"):
        image_to_rgb(raw_msg("bayer_rggb8", 1, 4, 4, bytes(4)))


def test_numpy_to_image_checks_type_against_encoding():
    with pytest.raises(ImageConversionError, match=r"'rgb8' expects 3 channel\(s\) of uint8.*\(4, 5\)"):
        numpy_to_image(np.zeros((4, 5), np.uint8), "rgb8")
    with pytest.raises(ImageConversionError, match="uint16"):
        numpy_to_image(np.zeros((4, 5), np.uint8), "mono16")
    with pytest.raises(ImageConversionError, match="'weird'"):
        numpy_to_image(np.zeros((4, 5), np.uint8), "weird")
    with pytest.raises(ImageConversionError, match="shape"):
        numpy_to_image(np.zeros((2, 4, 5, 3), np.uint8), "rgb8")


# --------------------------------------------------------------------------- compressed


def smooth_rgb(h: int = H, w: int = W) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (h + w - 2)],
                    axis=-1).astype(np.uint8)


@pytest.mark.parametrize("cls", [CompressedImage, BagCompressed], ids=["rclpy", "rosbags"])
def test_compressed_round_trips(cls):
    rgb = smooth_rgb()
    png = rgb_to_compressed(rgb, "png", msg_cls=cls)
    assert isinstance(png, cls) and png.format == "rgb8; png compressed bgr8"
    np.testing.assert_array_equal(compressed_to_rgb(png), rgb)
    jpg = rgb_to_compressed(rgb, "jpeg", msg_cls=cls)
    assert jpg.format == "rgb8; jpeg compressed bgr8"
    decoded = compressed_to_rgb(jpg)
    assert decoded.shape == rgb.shape and np.abs(decoded.astype(int) - rgb).mean() < 3
    mono = rgb[..., 0].copy()
    mono_png = rgb_to_compressed(mono, "png", msg_cls=cls)
    assert mono_png.format == "mono8; png compressed mono8"
    np.testing.assert_array_equal(compressed_to_rgb(mono_png), np.dstack([mono] * 3))


def test_compressed_header_and_serialization():
    header = Header(stamp=Time(sec=7, nanosec=8), frame_id="cam_rear")
    msg = rgb_to_compressed(smooth_rgb(), "png", header=header)
    back = deserialize_message(serialize_message(msg), CompressedImage)
    assert back.header.frame_id == "cam_rear"
    np.testing.assert_array_equal(compressed_to_rgb(back), smooth_rgb())


@pytest.mark.parametrize("fmt", ["jpeg", "JPEG", "rgb8; jpeg compressed bgr8",
                                 "bgr8; jpeg compressed bgr8", "mono8; jpeg compressed mono8", ""])
def test_jpeg_format_strings_accepted(fmt):
    data = bytes(rgb_to_compressed(smooth_rgb(), "jpeg").data)
    msg = CompressedImage(format=fmt)
    msg.data = array.array("B", data)
    assert compressed_to_rgb(msg).shape == (H, W, 3)


@pytest.mark.parametrize("fmt", ["png", "bgr8; png compressed", "rgb8; png compressed bgr8", ""])
def test_png_format_strings_accepted(fmt):
    data = bytes(rgb_to_compressed(smooth_rgb(), "png").data)
    np.testing.assert_array_equal(compressed_to_rgb(SimpleNamespace(format=fmt, data=data)),
                                  smooth_rgb())


def test_corrupt_compressed_data():
    jpg = bytes(rgb_to_compressed(smooth_rgb(), "jpeg").data)
    png = bytes(rgb_to_compressed(smooth_rgb(), "png").data)
    cases = {
        "truncated jpeg": ("jpeg", jpg[: len(jpg) // 2]),
        "truncated png": ("png", png[: len(png) // 2]),
        "garbage": ("jpeg", b"definitely not an image"),
        "empty": ("png", b""),
        "jpeg header only": ("jpeg", jpg[:200] + b"\xff\xd9"),
    }
    for what, (fmt, data) in cases.items():
        with pytest.raises(ImageConversionError, match="corrupt"):
            compressed_to_rgb(SimpleNamespace(format=fmt, data=data))
            pytest.fail(what)


def png16_msg(image: np.ndarray, fmt: str) -> SimpleNamespace:
    """A CompressedImage holding ``image`` (uint16, RGB order for colour) as a 16-bit PNG."""
    bgr = image if image.ndim == 2 else image[..., ::-1]
    ok, data = cv2.imencode(".png", np.ascontiguousarray(bgr))
    assert ok
    decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    assert decoded.dtype == np.uint16  # really a 16-bit PNG
    return SimpleNamespace(format=fmt, data=data.tobytes())


@pytest.mark.parametrize("encoding,fmt", [("mono16", "mono16; png compressed mono16"), ("mono16", "png"),
                                          ("rgb16", "rgb16; png compressed bgr16"), ("rgb16", "png")])
def test_16bit_png_is_handled_like_the_raw_encoding(encoding, fmt):
    image = random_image(encoding, 24, 32)
    raw = image_to_rgb(numpy_to_image(image, encoding))
    np.testing.assert_array_equal(compressed_to_rgb(png16_msg(image, fmt)), raw)
    # Not OpenCV's IMREAD_COLOR reduction (a right shift by 8), which rounds differently.
    assert (raw != (image >> 8).astype(np.uint8).reshape(raw.shape[:2] + (-1,))).any()


@pytest.mark.parametrize("source", ["16UC1", "8UC1", "32FC1"])
def test_colourless_source_encoding_is_refused_raw_and_compressed_alike(source):
    """A 16UC1 frame is depth/IR data: refused raw, and now refused compressed too (it was
    segmented as grey before), with the same reason."""
    image = random_image("mono16", 8, 8) if source == "16UC1" else random_image("mono8", 8, 8)
    with pytest.raises(ImageConversionError, match="carries no colour information") as raw_error:
        image_to_rgb(raw_msg(source, 8, 8, 8 * encoding_info(source)[1].itemsize,
                             bytes(8 * 8 * encoding_info(source)[1].itemsize)))
    assert repr(source) in str(raw_error.value)
    data = png16_msg(image, "").data if image.dtype == np.uint16 else bytes(rgb_to_compressed(image, "png").data)
    with pytest.raises(ImageConversionError, match="carries no colour information") as compressed_error:
        compressed_to_rgb(SimpleNamespace(format=f"{source}; png compressed ", data=data))
    assert repr(source) in str(compressed_error.value)


def test_unsupported_compressed_formats():
    data = bytes(rgb_to_compressed(smooth_rgb(), "png").data)
    for fmt in ("tiff", "16UC1; compressedDepth png", "h264"):
        with pytest.raises(ImageConversionError, match=r"unsupported compressed format.*jpeg, png"):
            compressed_to_rgb(SimpleNamespace(format=fmt, data=data))
    with pytest.raises(ImageConversionError, match="unsupported compressed format 'webp'"):
        rgb_to_compressed(smooth_rgb(), "webp")
    with pytest.raises(ImageConversionError, match="uint8"):
        rgb_to_compressed(smooth_rgb().astype(np.float32), "png")
    with pytest.raises(ImageConversionError, match="shape"):
        rgb_to_compressed(np.zeros((4, 4, 4), np.uint8), "png")
