"""Conversions between ROS image messages and numpy arrays, without cv_bridge.

Reimplements the parts of cv_bridge the node needs (``imgmsg_to_cv2(msg, "passthrough")``,
``cv2_to_imgmsg``, the colour conversions of ``cvtColor2`` towards RGB, and the compressed image
helpers) in numpy + OpenCV, so the package runs where cv_bridge cannot be installed.

Every function duck-types its message: rclpy messages (``data`` is ``array.array('B')``) and
rosbags' generated dataclasses (``data`` is a ``np.ndarray`` of uint8) both work, as do plain
objects whose ``data`` is bytes, bytearray, memoryview or a list of ints.

Layouts: ``image_to_numpy`` returns ``(H, W)`` for one-channel encodings and ``(H, W, C)``
otherwise, with the dtype of the encoding; the semi-planar YUV encodings (``nv12``, ``nv21``,
``nv24``) come back in OpenCV's single-plane layout instead: ``(H * 3 // 2, W)`` for the 4:2:0 ones,
``(3 * H, W)`` for ``nv24`` (luma rows, then the interleaved chroma rows). ``image_to_rgb`` and
``compressed_to_rgb`` return ``(H, W, 3)`` uint8 RGB, the network's input.

Row stride (``step``) rules, as cv_bridge/OpenCV apply them: ``step`` >= the packed row size, and a
multiple of the element size (2 bytes for the 16-bit encodings): a ``mono16`` image with an odd
step cannot be wrapped by ``cv::Mat`` and is refused here too, instead of being read misaligned.
For the semi-planar encodings ``step`` is the luma row stride and the chroma plane follows the luma
plane with the V4L2 strides (``step`` for NV12/NV21, ``2 * step`` for NV24); data of exactly the
packed size is also accepted whatever ``step`` says, since publishers disagree on what ``step``
means for these encodings (``numChannels`` is 2 in image_encodings.hpp).
"""
from __future__ import annotations

import array as _array
import re
import sys
from typing import Any

import cv2
import numpy as np

__all__ = [
    "SUPPORTED_ENCODINGS",
    "ImageConversionError",
    "compressed_to_rgb",
    "encoding_info",
    "image_to_numpy",
    "image_to_rgb",
    "numpy_to_image",
    "rgb_to_compressed",
]


class ImageConversionError(ValueError):
    """A message cannot be converted: bad encoding, inconsistent geometry, undecodable data."""


# Encoding name -> (channels, dtype) for the colour encodings of sensor_msgs/image_encodings.hpp
# that image_to_rgb can turn into RGB.
_COLOR_ENCODINGS: dict[str, tuple[int, np.dtype]] = {
    "rgb8": (3, np.dtype(np.uint8)),
    "bgr8": (3, np.dtype(np.uint8)),
    "rgba8": (4, np.dtype(np.uint8)),
    "bgra8": (4, np.dtype(np.uint8)),
    "mono8": (1, np.dtype(np.uint8)),
    "yuv422": (2, np.dtype(np.uint8)),
    "yuv422_yuy2": (2, np.dtype(np.uint8)),
    # ROS 2's names for the same two packed 4:2:2 layouts (yuv422/yuv422_yuy2 are deprecated aliases).
    "uyvy": (2, np.dtype(np.uint8)),
    "yuyv": (2, np.dtype(np.uint8)),
    # Semi-planar YUV (Y plane, then interleaved chroma); "channels" as image_encodings.hpp
    # numChannels() says. image_to_numpy gives OpenCV's single-plane layout for them (see above).
    "nv12": (2, np.dtype(np.uint8)),
    "nv21": (2, np.dtype(np.uint8)),
    "nv24": (2, np.dtype(np.uint8)),
    "bayer_rggb8": (1, np.dtype(np.uint8)),
    "bayer_bggr8": (1, np.dtype(np.uint8)),
    "bayer_gbrg8": (1, np.dtype(np.uint8)),
    "bayer_grbg8": (1, np.dtype(np.uint8)),
    "mono16": (1, np.dtype(np.uint16)),
    "rgb16": (3, np.dtype(np.uint16)),
    "bgr16": (3, np.dtype(np.uint16)),
    "rgba16": (4, np.dtype(np.uint16)),
    "bgra16": (4, np.dtype(np.uint16)),
    "bayer_rggb16": (1, np.dtype(np.uint16)),
    "bayer_bggr16": (1, np.dtype(np.uint16)),
    "bayer_gbrg16": (1, np.dtype(np.uint16)),
    "bayer_grbg16": (1, np.dtype(np.uint16)),
}

#: Encodings ``image_to_rgb`` accepts. ``image_to_numpy`` and ``numpy_to_image`` additionally
#: accept the generic OpenCV types (``8UC1`` ... ``64FC4``), like cv_bridge.
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_COLOR_ENCODINGS)

#: Semi-planar encodings -> chroma subsampling (rows, columns): 4:2:0 halves both, 4:4:4 neither.
_SEMI_PLANAR: dict[str, tuple[int, int]] = {"nv12": (2, 2), "nv21": (2, 2), "nv24": (1, 1)}

_GENERIC_DEPTHS = {
    "8U": np.uint8, "8S": np.int8, "16U": np.uint16, "16S": np.int16,
    "32S": np.int32, "32F": np.float32, "64F": np.float64,
}
_GENERIC_RE = re.compile(r"^(8U|8S|16U|16S|32S|32F|64F)C([1-4])$")
_DTYPE_TO_DEPTH = {np.dtype(v): k for k, v in _GENERIC_DEPTHS.items()}

# OpenCV names Bayer patterns after the 2x2 block starting at the second row and column, ROS
# after the one at the origin; this table is cv_bridge's (cv_bridge.cpp, getConversionCodes):
# ROS bayer_rggb -> COLOR_BayerBG2RGB, and so on. The test mosaics a known image to verify it.
_TO_RGB_CODES: dict[str, int] = {
    "bgr8": cv2.COLOR_BGR2RGB,
    "rgba8": cv2.COLOR_RGBA2RGB,
    "bgra8": cv2.COLOR_BGRA2RGB,
    "mono8": cv2.COLOR_GRAY2RGB,
    "yuv422": cv2.COLOR_YUV2RGB_UYVY,
    "yuv422_yuy2": cv2.COLOR_YUV2RGB_YUYV,
    "uyvy": cv2.COLOR_YUV2RGB_UYVY,
    "yuyv": cv2.COLOR_YUV2RGB_YUYV,
    "nv12": cv2.COLOR_YUV2RGB_NV12,
    "nv21": cv2.COLOR_YUV2RGB_NV21,
    "bayer_rggb8": cv2.COLOR_BayerBG2RGB,
    "bayer_bggr8": cv2.COLOR_BayerRG2RGB,
    "bayer_gbrg8": cv2.COLOR_BayerGR2RGB,
    "bayer_grbg8": cv2.COLOR_BayerGB2RGB,
}
# 16-bit encodings: same colour conversion as their 8-bit twin, after cv_bridge's depth scaling.
_TO_RGB_CODES.update({
    "bgr16": cv2.COLOR_BGR2RGB,
    "rgba16": cv2.COLOR_RGBA2RGB,
    "bgra16": cv2.COLOR_BGRA2RGB,
    "mono16": cv2.COLOR_GRAY2RGB,
    "bayer_rggb16": cv2.COLOR_BayerBG2RGB,
    "bayer_bggr16": cv2.COLOR_BayerRG2RGB,
    "bayer_gbrg16": cv2.COLOR_BayerGR2RGB,
    "bayer_grbg16": cv2.COLOR_BayerGB2RGB,
})

_PACKED_422 = ("yuv422", "yuv422_yuy2", "uyvy", "yuyv")

# OpenCV's fixed-point BT.601 limited-range YUV -> RGB (imgproc color_yuv: ITUR_BT_601_*), the
# arithmetic of its NV12/NV21/UYVY conversions; NV24 (4:4:4) has no OpenCV code, so it is done
# with the same integers and equals OpenCV's NV21 result wherever the chroma is the same.
_BT601_SHIFT = 20
_BT601_CY, _BT601_CVR, _BT601_CVG, _BT601_CUG, _BT601_CUB = 1220542, 1673527, -852492, -409993, 2116026

_NATIVE_BIG = sys.byteorder == "big"

# image_transport's compressed plugin defaults.
_DEFAULT_JPEG_QUALITY = 95
_DEFAULT_PNG_LEVEL = 3


def _supported_text() -> str:
    return ", ".join(SUPPORTED_ENCODINGS) + " (passthrough also: 8UC1..64FC4)"


def encoding_info(encoding: str) -> tuple[int, np.dtype]:
    """Return ``(channels, dtype)`` of a ROS image encoding.

    Raises ImageConversionError naming the encoding and listing the supported ones.
    """
    info = _COLOR_ENCODINGS.get(encoding)
    if info is not None:
        return info
    m = _GENERIC_RE.match(encoding) if isinstance(encoding, str) else None
    if m is not None:
        return int(m.group(2)), np.dtype(_GENERIC_DEPTHS[m.group(1)])
    raise ImageConversionError(
        f"unsupported image encoding {encoding!r}; supported: {_supported_text()}")


def _byte_buffer(data: Any, what: str = "data") -> np.ndarray:
    """View ``data`` as a 1-D uint8 array, without copying whenever it exposes a buffer."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8 or data.ndim != 1 or not data.flags.c_contiguous:
            data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        return data
    if isinstance(data, (list, tuple)):
        try:
            return np.array(data, dtype=np.uint8)
        except (OverflowError, ValueError, TypeError) as exc:
            raise ImageConversionError(f"{what}: values must be ints in 0..255 ({exc})") from None
    if isinstance(data, str):
        raise ImageConversionError(f"{what}: expected bytes-like data, got str")
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError) as exc:
        raise ImageConversionError(
            f"{what}: expected bytes-like data, got {type(data).__name__} ({exc})") from None


def image_to_numpy(msg: Any) -> np.ndarray:
    """cv_bridge ``imgmsg_to_cv2(msg, "passthrough")``: the message pixels as an array.

    Returns ``(H, W)`` for one-channel encodings, ``(H, W, C)`` otherwise, dtype per encoding.
    The result is a view on ``msg.data`` (no copy) whenever the byte order is native; padded rows
    (``step`` > ``width * channels * itemsize``) give a row-strided, non-contiguous view. 16-bit
    and wider data in the opposite byte order is returned as a native-order copy, as cv_bridge
    does. The view keeps an export on the message's buffer: an ``array.array`` ``msg.data``
    cannot be resized in place while the view lives (reassigning ``msg.data`` is fine).
    """
    encoding = msg.encoding
    channels, dtype = encoding_info(encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageConversionError(
            f"zero-size image: height={height}, width={width} (encoding {encoding!r})")
    if encoding in _SEMI_PLANAR:
        return _semi_planar_to_numpy(msg, encoding, height, width, step)
    if step % dtype.itemsize:
        # cv::Mat (and so cv_bridge) refuses such a step: rows would start between two elements.
        raise ImageConversionError(
            f"step {step} is not a multiple of the element size {dtype.itemsize} bytes "
            f"(encoding {encoding!r}): rows cannot start mid-element")
    pixel_bytes = channels * dtype.itemsize
    row_bytes = width * pixel_bytes
    if step < row_bytes:
        raise ImageConversionError(
            f"step {step} is smaller than width x channels x itemsize = "
            f"{width} x {channels} x {dtype.itemsize} = {row_bytes} (encoding {encoding!r})")
    buf = _byte_buffer(msg.data)
    if buf.size != step * height:
        raise ImageConversionError(
            f"data length {buf.size} does not match step x height = {step} x {height} = "
            f"{step * height} (encoding {encoding!r})")

    swap = dtype.itemsize > 1 and bool(msg.is_bigendian) != _NATIVE_BIG
    view_dtype = dtype.newbyteorder(">" if msg.is_bigendian else "<") if swap else dtype
    if channels == 1:
        shape: tuple[int, ...] = (height, width)
        strides: tuple[int, ...] = (step, dtype.itemsize)
    else:
        shape = (height, width, channels)
        strides = (step, pixel_bytes, dtype.itemsize)
    image = np.ndarray(shape, dtype=view_dtype, buffer=buf, strides=strides)
    if swap:
        image = image.astype(dtype)
    return image


def _semi_planar_to_numpy(msg: Any, encoding: str, height: int, width: int, step: int) -> np.ndarray:
    """``(H * 3 // 2, W)`` (nv12/nv21) or ``(3 * H, W)`` (nv24) uint8, OpenCV's layout."""
    sub_rows, sub_cols = _SEMI_PLANAR[encoding]
    if height % sub_rows or width % sub_cols:
        raise ImageConversionError(
            f"{encoding} needs an even width and height (4:2:0 chroma), got {width}x{height}")
    chroma_rows = height // sub_rows
    chroma_bytes = 2 * width // sub_cols  # interleaved pairs per chroma row
    if step < width:
        raise ImageConversionError(
            f"step {step} is smaller than the luma row of {width} bytes (encoding {encoding!r})")
    chroma_step = step * 2 // sub_cols   # V4L2: the chroma rows are as much wider as they hold
    buf = _byte_buffer(msg.data)
    packed = height * width + chroma_rows * chroma_bytes
    strided = height * step + chroma_rows * chroma_step
    if buf.size == strided:
        luma = np.ndarray((height, width), np.uint8, buffer=buf, strides=(step, 1))
        chroma = np.ndarray((chroma_rows, chroma_bytes), np.uint8, buffer=buf,
                            offset=height * step, strides=(chroma_step, 1))
    elif buf.size == packed:
        luma = buf[: height * width].reshape(height, width)
        chroma = buf[height * width:].reshape(chroma_rows, chroma_bytes)
    else:
        raise ImageConversionError(
            f"data length {buf.size} does not match {encoding} {width}x{height}: expected "
            f"{strided} (luma rows of step {step}, then chroma rows of {chroma_step}) or "
            f"{packed} (packed planes)")
    if step == width:  # packed planes: a view, like every other encoding
        return buf.reshape(-1, width)
    # OpenCV wants both planes in one (rows, W) array: copy the padded rows out once.
    return np.concatenate([luma, chroma.reshape(-1, width)], axis=0)


def _nv24_to_rgb(planes: np.ndarray, height: int) -> np.ndarray:
    """``(3 * H, W)`` NV24 (Y plane, then U V pairs at full resolution) -> ``(H, W, 3)`` RGB."""
    width = planes.shape[1]
    y = planes[:height].astype(np.int32)
    uv = planes[height:].reshape(height, width, 2).astype(np.int32)
    u, v = uv[..., 0] - 128, uv[..., 1] - 128
    y = np.maximum(y - 16, 0) * _BT601_CY + (1 << (_BT601_SHIFT - 1))
    rgb = np.empty((height, width, 3), np.uint8)
    for channel, value in enumerate((y + _BT601_CVR * v,
                                     y + _BT601_CVG * v + _BT601_CUG * u,
                                     y + _BT601_CUB * u)):
        np.clip(value >> _BT601_SHIFT, 0, 255, out=value)
        rgb[..., channel] = value
    return rgb


def _scale_to_8bit(image: np.ndarray) -> np.ndarray:
    # cv_bridge: convertTo(CV_8U, 255/65535), i.e. rounded and saturated, not a right shift.
    return cv2.convertScaleAbs(image, alpha=255.0 / 65535.0)


def image_to_rgb(msg: Any) -> np.ndarray:
    """Convert a sensor_msgs/Image of any supported encoding to ``(H, W, 3)`` uint8 RGB.

    ``rgb8`` returns the zero-copy view of ``image_to_numpy`` (row-strided when the message rows
    are padded); every other encoding returns a new contiguous array. 16-bit encodings are
    scaled by 255/65535 like cv_bridge's ``cvtColor2(..., "rgb8")``. The YUV encodings use OpenCV's
    BT.601 limited-range conversions (``uyvy``/``yuyv`` and their deprecated names ``yuv422``/
    ``yuv422_yuy2``, ``nv12``, ``nv21``); ``nv24``, which OpenCV has no code for, uses the same
    integer arithmetic on its full-resolution chroma.
    """
    encoding = msg.encoding
    if encoding not in _COLOR_ENCODINGS:
        if isinstance(encoding, str) and _GENERIC_RE.match(encoding):
            raise ImageConversionError(
                f"image encoding {encoding!r} carries no colour information and cannot be "
                f"converted to RGB; supported: {', '.join(SUPPORTED_ENCODINGS)}")
        encoding_info(encoding)  # raises with the list of supported encodings
    image = image_to_numpy(msg)
    if encoding == "rgb8":
        return image
    if encoding == "nv24":
        return _nv24_to_rgb(image, int(msg.height))
    if encoding in _PACKED_422 and image.shape[1] % 2:
        raise ImageConversionError(
            f"{encoding} needs an even width (two pixels share chroma), got width {image.shape[1]}")
    if encoding.startswith("bayer_") and (image.shape[0] < 2 or image.shape[1] < 2):
        raise ImageConversionError(
            f"{encoding} needs at least 2x2 pixels to demosaic, got {image.shape[1]}x{image.shape[0]}")
    if image.dtype == np.uint16 and not encoding.startswith("bayer_"):
        image = _scale_to_8bit(image)
        if encoding == "rgb16":
            return image
    try:
        rgb = cv2.cvtColor(image, _TO_RGB_CODES[encoding])
    except cv2.error as exc:
        raise ImageConversionError(f"cannot convert {encoding} to rgb8: {exc}") from None
    if rgb.dtype == np.uint16:  # bayer_*16: demosaic at full depth, then scale
        rgb = _scale_to_8bit(rgb)
    return rgb


def _is_rosbags_class(msg_cls: type) -> bool:
    # rosbags' generated dataclasses carry the ROS type name as a class variable; rclpy's don't.
    return hasattr(msg_cls, "__msgtype__")


def _rosbags_default_header(msg_cls: type) -> Any:
    """A zero header built from the same rosbags type store as ``msg_cls``."""
    module = sys.modules.get(msg_cls.__module__)
    header_cls = getattr(module, "std_msgs__msg__Header", None)
    time_cls = getattr(module, "builtin_interfaces__msg__Time", None)
    if header_cls is None or time_cls is None:
        raise TypeError(
            f"cannot build a default header for {msg_cls.__name__}; pass header=")
    return header_cls(stamp=time_cls(sec=0, nanosec=0), frame_id="")


def _byte_array(data: np.ndarray) -> _array.array:
    # array.array('B') is what rclpy stores and its setter accepts without a per-element check
    # (Humble always checks other sequences element by element); frombytes copies once.
    out = _array.array("B")
    out.frombytes(np.ascontiguousarray(data).data)
    return out


def _build_message(msg_cls: type | None, default_path: str, fields: dict[str, Any],
                   data: np.ndarray, header: Any) -> Any:
    """Instantiate an rclpy or rosbags message from plain fields and a contiguous byte array."""
    data = data.reshape(-1).view(np.uint8)  # C-contiguous by the callers: no copy
    if msg_cls is None:
        import importlib

        module_name, _, cls_name = default_path.rpartition(".")
        msg_cls = getattr(importlib.import_module(module_name), cls_name)
    if _is_rosbags_class(msg_cls):
        if header is None:
            header = _rosbags_default_header(msg_cls)
        # rosbags keeps uint8[] as an ndarray; copy so the message never aliases the caller's array.
        return msg_cls(header=header, data=data.copy(), **fields)
    msg = msg_cls()
    if header is not None:
        msg.header = header
    for name, value in fields.items():
        setattr(msg, name, value)
    payload = _byte_array(data)
    if getattr(msg, "_check_fields", True) is False and "_data" in getattr(msg_cls, "__slots__", ()):
        # With field checks off (rclpy's default since Iron) the generated setter stores
        # array.array('B', value), a second full copy of an array we just built; storing it
        # directly is what the setter would end up with. Humble's setter keeps an array.array
        # as is, so there (and with checks on) the public setter costs nothing extra.
        msg._data = payload
    else:
        msg.data = payload
    return msg


def numpy_to_image(array: np.ndarray, encoding: str, header: Any = None,
                   msg_cls: type | None = None) -> Any:
    """cv_bridge ``cv2_to_imgmsg``: wrap an ``(H, W)`` or ``(H, W, C)`` array in an Image.

    ``encoding`` must agree with the array's channel count and dtype (``"passthrough"`` picks
    the generic OpenCV name, e.g. ``8UC3``). ``step = width * channels * itemsize`` (rows are
    packed), ``is_bigendian`` follows the array's byte order (native unless the dtype says
    otherwise). ``msg_cls`` defaults to ``sensor_msgs.msg.Image``; rosbags' generated Image
    classes are also accepted. The message owns a copy of the pixels.

    The semi-planar encodings take OpenCV's single-plane layout, as ``image_to_numpy`` returns it:
    a ``(H * 3 // 2, W)`` (``nv12``, ``nv21``) or ``(3 * H, W)`` (``nv24``) uint8 array gives an
    image of height ``H`` with ``step = W`` (the luma row; the chroma plane follows packed).
    """
    if not isinstance(array, np.ndarray):
        raise ImageConversionError(f"expected a numpy array, got {type(array).__name__}")
    if encoding in _SEMI_PLANAR:
        return _semi_planar_message(array, encoding, header, msg_cls)
    if array.ndim == 2:
        channels = 1
    elif array.ndim == 3:
        channels = array.shape[2]
    else:
        raise ImageConversionError(
            f"expected an (H, W) or (H, W, C) array, got shape {array.shape}")
    height, width = array.shape[:2]
    if height == 0 or width == 0 or channels == 0:
        raise ImageConversionError(f"zero-size image: array shape {array.shape}")
    native_dtype = array.dtype.newbyteorder("=")
    if encoding == "passthrough":
        depth = _DTYPE_TO_DEPTH.get(native_dtype)
        if depth is None or channels > 4:
            raise ImageConversionError(
                f"no generic encoding for dtype {array.dtype} with {channels} channels")
        encoding = f"{depth}C{channels}"
    want_channels, want_dtype = encoding_info(encoding)
    if want_channels != channels or want_dtype != native_dtype:
        raise ImageConversionError(
            f"encoding {encoding!r} expects {want_channels} channel(s) of {want_dtype}, got an "
            f"array of shape {array.shape} and dtype {array.dtype}")
    data = np.ascontiguousarray(array)
    if data.dtype.itemsize > 1 and data.dtype.byteorder in "<>":
        is_bigendian = data.dtype.byteorder == ">"
    else:
        is_bigendian = _NATIVE_BIG
    fields = {
        "height": int(height), "width": int(width), "encoding": encoding,
        "is_bigendian": int(is_bigendian), "step": int(width * channels * data.dtype.itemsize),
    }
    return _build_message(msg_cls, "sensor_msgs.msg.Image", fields, data, header)


def _semi_planar_message(array: np.ndarray, encoding: str, header: Any, msg_cls: type | None) -> Any:
    sub_rows, sub_cols = _SEMI_PLANAR[encoding]
    # rows = H + chroma rows, where the chroma plane holds H / sub_rows rows of 2 W / sub_cols bytes.
    ratio = 1 + 2 / (sub_rows * sub_cols)
    if array.ndim != 2 or array.dtype != np.uint8 or array.size == 0:
        raise ImageConversionError(
            f"encoding {encoding!r} expects a 2-D uint8 array in OpenCV's layout, got shape "
            f"{array.shape} and dtype {array.dtype}")
    rows, width = array.shape
    height = round(rows / ratio)
    if round(height * ratio) != rows or height % sub_rows or width % sub_cols:
        raise ImageConversionError(
            f"encoding {encoding!r}: a ({rows}, {width}) array is not the layout of an image "
            f"(expected (H * {ratio:g}, W) with H and W divisible by the chroma subsampling)")
    fields = {"height": int(height), "width": int(width), "encoding": encoding,
              "is_bigendian": 0, "step": int(width)}
    return _build_message(msg_cls, "sensor_msgs.msg.Image", fields, np.ascontiguousarray(array), header)


def _compressed_kind(fmt: str) -> str | None:
    """``"jpeg"``, ``"png"`` or None (format not given) from a CompressedImage.format string.

    image_transport writes e.g. ``"rgb8; jpeg compressed bgr8"`` or ``"bgr8; png compressed"``;
    ROS 1 era publishers wrote just ``"jpeg"``.
    """
    text = (fmt or "").strip().lower()
    if not text:
        return None
    if "compresseddepth" in text:
        raise ImageConversionError(
            f"unsupported compressed format {fmt!r} (compressedDepth); supported: jpeg, png")
    words = set(re.split(r"[^a-z0-9]+", text))
    if words & {"jpeg", "jpg"}:
        return "jpeg"
    if "png" in words:
        return "png"
    raise ImageConversionError(f"unsupported compressed format {fmt!r}; supported: jpeg, png")


def _compressed_source_encoding(fmt: str) -> str | None:
    """The source encoding image_transport writes before ``;`` (``"mono16; png compressed ..."``)."""
    text = (fmt or "").strip()
    if ";" not in text:
        return None
    return text.split(";", 1)[0].strip() or None


_PNG_TO_RGB = {1: cv2.COLOR_GRAY2RGB, 3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}


def compressed_to_rgb(msg: Any) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage (jpeg or png) to ``(H, W, 3)`` uint8 RGB.

    Grey images come back with three equal channels. Depth follows the raw encodings: a 16-bit PNG
    (``mono16``/``rgb16``/``bgr16`` source, or a plain ``png`` format string) is decoded at full
    depth and scaled by 255/65535 exactly like the raw 16-bit encodings (cv_bridge's rule), so a
    ``mono16`` frame gives the same RGB raw or compressed. A source encoding without colour
    (``16UC1; png compressed``, any generic ``8UC1``..``64FC4``) is refused as it is raw: such
    frames are depth or other measurements, and segmenting them as grey would be a wrong answer.
    """
    fmt = getattr(msg, "format", "")
    kind = _compressed_kind(fmt)
    source = _compressed_source_encoding(fmt)
    if source is not None and _GENERIC_RE.match(source):
        raise ImageConversionError(
            f"compressed image of source encoding {source!r} (format {fmt!r}) carries no colour "
            f"information and cannot be converted to RGB, like the raw {source} encoding; "
            f"supported: {', '.join(SUPPORTED_ENCODINGS)}")
    buf = _byte_buffer(msg.data, "CompressedImage.data")
    if buf.size == 0:
        raise ImageConversionError(f"corrupt compressed image: no data (format {fmt!r})")
    head = buf[:8].tobytes()
    is_png = head.startswith(b"\x89PNG\r\n\x1a\n")
    if head.startswith(b"\xff\xd8\xff"):
        # libjpeg accepts a truncated stream with only a warning in some OpenCV builds and fills
        # the missing rows with grey; a missing end-of-image marker is how truncation shows.
        if b"\xff\xd9" not in buf[-64:].tobytes():
            raise ImageConversionError(
                f"corrupt compressed image: JPEG data of {buf.size} bytes has no end-of-image "
                f"marker (truncated?), format {fmt!r}")
    elif not is_png:
        raise ImageConversionError(
            f"corrupt compressed image: data of {buf.size} bytes is neither JPEG nor PNG "
            f"(format {fmt!r}, expected {kind or 'jpeg or png'})")
    try:
        # PNG unchanged, to keep 16 bit (IMREAD_COLOR would shift it right by 8, not cv_bridge's
        # rounding); JPEG is 8 bit and IMREAD_COLOR applies its EXIF orientation as before.
        image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED if is_png else cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ImageConversionError(f"corrupt compressed image (format {fmt!r}): {exc}") from None
    if image is None:
        raise ImageConversionError(
            f"corrupt compressed image: cannot decode {buf.size} bytes (format {fmt!r})")
    if image.dtype == np.uint16:
        image = _scale_to_8bit(image)
    elif image.dtype != np.uint8:
        raise ImageConversionError(
            f"compressed image of pixel type {image.dtype} (format {fmt!r}) is not supported")
    channels = 1 if image.ndim == 2 else image.shape[2]
    return cv2.cvtColor(image, _PNG_TO_RGB[channels])


def rgb_to_compressed(array: np.ndarray, fmt: str = "jpeg", header: Any = None,
                      msg_cls: type | None = None, quality: int | None = None) -> Any:
    """Encode ``(H, W, 3)`` uint8 RGB (or ``(H, W)`` uint8 mono) as a CompressedImage.

    ``fmt`` is ``"jpeg"`` or ``"png"``; ``quality`` is the JPEG quality (default 95) or the PNG
    compression level (default 3), image_transport's defaults. The format string is written as
    image_transport does: ``"rgb8; jpeg compressed bgr8"``, ``"mono8; png compressed mono8"``.
    ``msg_cls`` defaults to ``sensor_msgs.msg.CompressedImage`` (rosbags classes also accepted).
    """
    kind = {"jpeg": "jpeg", "jpg": "jpeg", "png": "png"}.get(str(fmt).lower())
    if kind is None:
        raise ImageConversionError(f"unsupported compressed format {fmt!r}; supported: jpeg, png")
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8:
        raise ImageConversionError(
            f"expected a uint8 numpy array, got {getattr(array, 'dtype', type(array).__name__)}")
    if array.ndim == 3 and array.shape[2] == 3:
        source, target, image = "rgb8", "bgr8", cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    elif array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 1):
        source = target = "mono8"
        image = array.reshape(array.shape[:2])
    else:
        raise ImageConversionError(
            f"expected an (H, W, 3) RGB or (H, W) mono array, got shape {array.shape}")
    if image.size == 0:
        raise ImageConversionError(f"zero-size image: array shape {array.shape}")
    if kind == "jpeg":
        params = [cv2.IMWRITE_JPEG_QUALITY, _DEFAULT_JPEG_QUALITY if quality is None else int(quality)]
    else:
        params = [cv2.IMWRITE_PNG_COMPRESSION, _DEFAULT_PNG_LEVEL if quality is None else int(quality)]
    ok, encoded = cv2.imencode(".jpg" if kind == "jpeg" else ".png", image, params)
    if not ok:
        raise ImageConversionError(f"OpenCV failed to encode a {array.shape} image as {kind}")
    fields = {"format": f"{source}; {kind} compressed {target}"}
    return _build_message(msg_cls, "sensor_msgs.msg.CompressedImage", fields,
                          encoded.reshape(-1), header)
