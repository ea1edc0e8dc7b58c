"""The segmentation node's parameters: one table, its validation, and the topic-name helpers.

``PARAMETERS`` is the single source of truth: the node declares exactly these (with
``ParameterDescriptor``s built from them), ``config/sfnet.yaml`` must list every one of them and
docs/node.md documents them (``test/test_launch_params.py`` keeps the three in step).
This module imports no rclpy at module level, so tools and tests can read the table without ROS.

Parameters are read once, at the lifecycle ``configure`` transition, into a frozen
``NodeConfig``. Most of them change what configure builds (model, subscriptions, QoS), so the
node accepts new values for them only while unconfigured (``cleanup``, set, ``configure``); the
few marked ``runtime`` only change how outputs are drawn and apply to the next frame.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sfnet_core.errors import ConfigError

__all__ = [
    "APPLIED_AT_CONFIGURE",
    "APPLIED_AT_RUNTIME",
    "APPLIED_AT_STARTUP",
    "BACKENDS",
    "OUTPUT_RESOLUTIONS",
    "RESIZE_POLICIES",
    "NodeConfig",
    "PARAMETERS",
    "ParamSpec",
    "camera_prefix",
    "config_from_values",
    "non_finite_error",
    "parameter_descriptor",
    "parameters_markdown",
    "spec",
    "topic_token",
]

#: When a new value takes effect (also what the node's set-parameters guard enforces).
APPLIED_AT_STARTUP = "startup"      # read once when the process starts (descriptor read_only)
APPLIED_AT_CONFIGURE = "configure"  # read at configure; settable only while unconfigured
APPLIED_AT_RUNTIME = "runtime"      # settable any time, used from the next frame on

# The Segmenter's choices (sfnet_core.inference: BACKENDS, RESIZE_POLICIES, OUTPUT_RESOLUTIONS),
# repeated so this table imports no torch; test_node_messages.py keeps them equal.
BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
RESIZE_POLICIES = ("stretch", "letterbox", "crop")
OUTPUT_RESOLUTIONS = ("input", "network")

# Value kinds, named as in rcl_interfaces/ParameterType (lower case).
_KINDS = ("bool", "integer", "double", "string", "integer_array", "string_array")


@dataclass(frozen=True)
class ParamSpec:
    """One node parameter: its name, kind, default and documentation."""

    name: str
    kind: str                      # one of _KINDS
    default: Any
    description: str
    applied: str = APPLIED_AT_CONFIGURE
    choices: tuple[str, ...] = ()  # allowed string values (validated at configure)
    value_range: tuple[float, float] | None = None  # inclusive, for integer and double

    @property
    def read_only(self) -> bool:
        return self.applied == APPLIED_AT_STARTUP

    def constraints_text(self) -> str:
        """Human-readable constraints, used in the descriptor and the docs/node.md table."""
        parts = []
        if self.choices:
            parts.append("one of: " + ", ".join(self.choices))
        if self.value_range is not None:
            low, high = self.value_range
            parts.append(f"range {_fmt(low)}..{_fmt(high)}")
        if self.kind.endswith("_array"):
            parts.append(f"type {self.kind.replace('_', ' ')}")
        parts.append({
            APPLIED_AT_STARTUP: "read at start-up only",
            APPLIED_AT_CONFIGURE: "applied at configure; settable only while unconfigured",
            APPLIED_AT_RUNTIME: "settable at runtime",
        }[self.applied])
        return "; ".join(parts)


def _fmt(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec(
        "checkpoint", "string", "",
        "Path of the model: a .pt checkpoint (written by sfnet-train) or a self-describing .onnx "
        "(written by sfnet-export); loaded and warmed up at configure.",
    ),
    ParamSpec(
        "backend", "string", "auto",
        "Inference runtime: auto (the fastest path here: on the CPU a .onnx in OpenVINO when "
        "installed, else ONNX Runtime, and a .pt in OpenVINO bf16 where the CPU has native bf16, "
        "else PyTorch; on CUDA PyTorch for a .pt, ONNX Runtime for "
        "a .onnx; PyTorch whenever publish_flow or compile asks for it), torch, onnxruntime or "
        "openvino (CPU only). onnxruntime and openvino run a .pt through the export cache "
        "($SFNET_ROS_CACHE or ~/.cache/sfnet_ros; OpenVINO's compiled models too). ONNX Runtime uses "
        "the CPU execution provider, or CUDA / TensorRT when the installed onnxruntime has them and "
        "the device is CUDA.",
        choices=BACKENDS,
    ),
    ParamSpec(
        "device", "string", "auto",
        "Inference device: auto (first CUDA GPU, else CPU), cpu, cuda or cuda:N. "
        "A CUDA device that is not available falls back to the CPU with a warning.",
    ),
    ParamSpec(
        "precision", "string", "auto",
        "Arithmetic precision: auto (torch: fp16 on CUDA, fp32 on CPU; onnxruntime: the model's "
        "own, fp32 or int8; openvino: an int8 model's int8, else bf16 where the CPU has it natively, "
        "else fp32), fp32, fp16, bf16, or int8 (an int8 .onnx from sfnet-export --int8).",
        choices=("auto", "fp32", "fp16", "bf16", "int8"),
    ),
    ParamSpec(
        "compile", "bool", False,
        "Compile the network with torch.compile at configure. On a GPU at batch 1 eager PyTorch is "
        "bound by kernel launches (measured on an H200: 1.5x the frame rate end to end); configure "
        "then takes about a minute more, and each new input size compiles again, so fix input_size.",
    ),
    ParamSpec(
        "threads", "integer", 0,
        "CPU threads of the network (PyTorch's intra-op threads; ONNX Runtime and OpenVINO use the "
        "same count): 0 = the cores this process may run on (its affinity mask, e.g. from taskset "
        "or a container's cpuset). A larger value is allowed and logged as a warning. "
        "Idle threads spin only briefly before they sleep, so a CPU-hungry neighbour does not collapse "
        "the frame rate (docs/performance.md, Threads).",
        value_range=(0, 1024),
    ),
    ParamSpec(
        "input_size", "integer_array", [],
        "Network input size [H, W]; frames are brought to it by the resize policy and labels come "
        "back at output_resolution. [] runs at each frame's native resolution.",
    ),
    ParamSpec(
        "resize", "string", "stretch",
        "How a frame reaches input_size: stretch (both axes scaled independently), letterbox "
        "(aspect kept, centred, bands of the mean colour; the bands are 255 = unlabeled) or crop "
        "(aspect kept, the largest centred window of the frame; pixels outside it are 255 = "
        "unlabeled). Needs input_size.",
        choices=RESIZE_POLICIES,
    ),
    ParamSpec(
        "output_resolution", "string", "input",
        "Resolution of the published labels, colour, masks, confidence and camera_info: input (the "
        "frame's) or network (input_size, as Isaac ROS publishes: no upsampling, less bandwidth). "
        "network needs input_size.",
        choices=OUTPUT_RESOLUTIONS,
    ),
    ParamSpec(
        "max_input_pixels", "integer", 8_294_400,
        "Largest frame (height x width) the node segments; larger frames are dropped, counted as "
        "dropped_too_large on /diagnostics with the reason, and logged (throttled). Bounds the "
        "memory one frame can take (see docs/node.md, Memory). The default admits 3840x2160; 0 = no limit.",
        value_range=(0, 1_000_000_000),
    ),
    ParamSpec(
        "cameras", "string_array", [],
        "Camera names served by this one model, e.g. [front, left]: subscribes <camera>/image and "
        "publishes <camera>/segmentation/...; frames waiting together are batched. "
        "[] = a single camera at the node's namespace (image, segmentation/...).",
    ),
    ParamSpec(
        "transport", "string", "raw",
        "Input transport: raw subscribes <camera>/image (sensor_msgs/Image); compressed subscribes "
        "<camera>/image/compressed (sensor_msgs/CompressedImage, jpeg or png).",
        choices=("raw", "compressed"),
    ),
    ParamSpec(
        "mask_classes", "string_array", [],
        "Class names (from the checkpoint's class table) that get a binary mask topic "
        "segmentation/mask/<name> (spaces and other characters become _, e.g. traffic_light).",
    ),
    ParamSpec(
        "publish_color", "bool", True,
        "Publish segmentation/color (rgb8, class palette); built only while someone subscribes.",
        applied=APPLIED_AT_RUNTIME,
    ),
    ParamSpec(
        "color_overlay", "bool", False,
        "Blend segmentation/color over the camera image instead of the bare palette.",
        applied=APPLIED_AT_RUNTIME,
    ),
    ParamSpec(
        "overlay_alpha", "double", 0.5,
        "Weight of the palette colour in the overlay (0 = image only, 1 = palette only).",
        applied=APPLIED_AT_RUNTIME, value_range=(0.0, 1.0),
    ),
    ParamSpec(
        "publish_confidence", "bool", True,
        "Publish segmentation/confidence (mono8, max softmax x 255); computed only while someone "
        "subscribes.",
        applied=APPLIED_AT_RUNTIME,
    ),
    ParamSpec(
        "publish_timing", "bool", True,
        "Publish segmentation/timing (diagnostic_msgs/DiagnosticArray, the frame's header): receive, "
        "inference and publish times of every output frame; built only while someone subscribes.",
        applied=APPLIED_AT_RUNTIME,
    ),
    ParamSpec(
        "publish_flow", "bool", False,
        "Publish segmentation/flow (rgb8, the finest FAM's semantic flow colour-coded, at the "
        "labels' resolution) for debugging; costs a flow download per frame while someone "
        "subscribes. Needs the torch backend.",
    ),
    ParamSpec(
        "qos_reliability", "string", "best_effort",
        "Reliability of the image and camera_info subscriptions and the segmentation publishers: "
        "best_effort (sensor data QoS, matches camera drivers) or reliable.",
        choices=("best_effort", "reliable"),
    ),
    ParamSpec(
        "qos_depth", "integer", 1,
        "History depth (keep last) of the image and camera_info subscriptions and the segmentation "
        "publishers. The node only ever processes the newest frame per camera, whatever the depth.",
        value_range=(1, 100),
    ),
    ParamSpec(
        "autostart", "bool", True,
        "Walk through configure and activate on start-up, so the node runs without a lifecycle "
        "manager. If configure fails (bad checkpoint or parameter) the node logs why and stays "
        "unconfigured; a lifecycle manager (or the change_state service) may retry.",
        applied=APPLIED_AT_STARTUP,
    ),
    ParamSpec(
        "exit_on_shutdown", "bool", True,
        "End the process (exit code 0) after the lifecycle shutdown transition, as a ROS user "
        "expects of a finalized node; false keeps the process alive in the finalized state.",
        applied=APPLIED_AT_STARTUP,
    ),
    ParamSpec(
        "diagnostics_period", "double", 1.0,
        "Seconds between /diagnostics messages (rates and latencies are averaged over this window).",
        value_range=(0.1, 60.0),
    ),
    ParamSpec(
        "input_timeout_warn", "double", 2.0,
        "Seconds without a frame after which a camera's /diagnostics status turns WARN (counted "
        "per camera from its last frame, or from activation if it never sent one); OK again with "
        "the next frame. 0 = never.",
        value_range=(0.0, 3600.0),
    ),
    ParamSpec(
        "input_timeout_error", "double", 10.0,
        "Seconds without a frame after which a camera's /diagnostics status turns ERROR (same "
        "counting as input_timeout_warn, and larger than it). 0 = never.",
        value_range=(0.0, 3600.0),
    ),
    ParamSpec(
        "input_loss_warn", "double", 0.05,
        "Share of a camera's frames lost in a diagnostics window above which its /diagnostics status "
        "turns WARN, naming the likely cause (see docs/transport.md). Lost = the larger of the frames "
        "DDS reported lost (message-lost event) and the frames missing by the header stamps against "
        "the camera's observed period; share = lost / (received + lost). 0 = any loss, 1 = never.",
        value_range=(0.0, 1.0),
    ),
)

_BY_NAME = {p.name: p for p in PARAMETERS}


def spec(name: str) -> ParamSpec:
    """The ParamSpec of parameter ``name`` (KeyError for an unknown name)."""
    return _BY_NAME[name]


@dataclass(frozen=True)
class NodeConfig:
    """Validated parameter values, as the node uses them."""

    checkpoint: Path
    backend: str
    device: str
    precision: str
    compile: bool
    threads: int
    input_size: tuple[int, int] | None
    resize: str
    output_resolution: str
    max_input_pixels: int
    cameras: tuple[str, ...]
    transport: str
    mask_classes: tuple[str, ...]
    publish_color: bool
    color_overlay: bool
    overlay_alpha: float
    publish_confidence: bool
    publish_timing: bool
    publish_flow: bool
    qos_reliability: str
    qos_depth: int
    autostart: bool
    exit_on_shutdown: bool
    diagnostics_period: float
    input_timeout_warn: float
    input_timeout_error: float
    input_loss_warn: float

    @property
    def camera_names(self) -> tuple[str, ...]:
        """Cameras to serve; ``("",)`` is the single camera at the node's namespace."""
        return self.cameras or ("",)


_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
# A camera name becomes a relative topic prefix: ROS name tokens, '/'-separated.
_CAMERA_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*$")


def _bad(name: str, problem: str) -> ConfigError:
    return ConfigError(f"parameter '{name}': {problem}")


def non_finite_error(name: str, value: float) -> ConfigError:
    """The one error for NaN or infinity in a floating-point parameter (refused at configure)."""
    return _bad(name, f"{value!r} is not a finite number (NaN and infinity are refused)")


def _as_list(name: str, value: Any, item_type: type, item_text: str) -> list:
    # Empty arrays arrive as None (YAML `[]` has no element type, rcl reports PARAMETER_NOT_SET)
    # or as an empty list of whatever type rclpy guessed; both mean "empty".
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise _bad(name, f"expected a list of {item_text}, got {value!r}")
    items = list(value)
    for item in items:
        if not isinstance(item, item_type) or isinstance(item, bool) and item_type is not bool:
            raise _bad(name, f"expected a list of {item_text}, got {items!r}")
    return items


def _check_scalar(p: ParamSpec, value: Any) -> Any:
    expected: dict[str, tuple[type, ...]] = {
        "bool": (bool,), "integer": (int,), "double": (float, int), "string": (str,),
    }
    if not isinstance(value, expected[p.kind]) or (p.kind != "bool" and isinstance(value, bool)):
        raise _bad(p.name, f"expected {p.kind}, got {value!r}")
    if p.kind == "double" and isinstance(value, (int, float)):  # always, here; says so to the type checker
        value = float(value)
        if not math.isfinite(value):
            raise non_finite_error(p.name, value)
    if p.value_range is not None:
        low, high = p.value_range
        if not low <= value <= high:
            raise _bad(p.name, f"{value!r} is outside the range {_fmt(low)}..{_fmt(high)}")
    if p.choices and value not in p.choices:
        raise _bad(p.name, f"{value!r} is not one of: {', '.join(p.choices)}")
    return value


def config_from_values(values: Mapping[str, Any]) -> NodeConfig:
    """Validate raw parameter values (name -> python value) into a NodeConfig.

    Missing names take their default. Raises ConfigError naming the first bad parameter, e.g.
    ``parameter 'precision': 'fp8' is not one of: auto, fp32, fp16, bf16``. Only what can be
    checked without loading the model is checked here (the checkpoint file must exist; whether
    ``mask_classes`` names real classes is checked against the checkpoint's class table).
    """
    unknown = sorted(set(values) - set(_BY_NAME))
    if unknown:
        raise ConfigError(f"unknown parameter(s) {unknown}; valid: {', '.join(_BY_NAME)}")
    raw = {p.name: values.get(p.name, p.default) for p in PARAMETERS}
    checked: dict[str, Any] = {}
    for p in PARAMETERS:
        if not p.kind.endswith("_array"):
            checked[p.name] = _check_scalar(p, raw[p.name])

    checkpoint = checked["checkpoint"].strip()
    if not checkpoint:
        raise _bad("checkpoint", "not set; give the path of a .pt or .onnx file (-p checkpoint:=/path/model.pt)")
    checkpoint_path = Path(checkpoint).expanduser()
    if not checkpoint_path.is_file():
        raise _bad("checkpoint", f"file not found: {checkpoint_path}")
    if checkpoint_path.suffix.lower() == ".onnx" and checked["backend"] == "torch":
        raise _bad("backend", f"torch cannot run the exported model {checkpoint_path.name}: use onnxruntime, "
                   "openvino (or auto), or give the .pt checkpoint")

    device = checked["device"].strip().lower()
    if not _DEVICE_RE.match(device):
        raise _bad("device", f"expected auto, cpu, cuda or cuda:N, got {checked['device']!r}")

    size = _as_list("input_size", raw["input_size"], int, "two integers [H, W]")
    if size and (len(size) != 2 or min(size) < 1):
        raise _bad("input_size", f"expected [H, W] with H, W >= 1, or [] for native size, got {size!r}")
    if not size and checked["resize"] != "stretch":
        raise _bad("resize", f"{checked['resize']} needs input_size (at the native resolution nothing is resized)")
    if not size and checked["output_resolution"] == "network":
        raise _bad("output_resolution", "network needs input_size (at the native resolution the network's "
                   "size is the frame's)")
    if checked["precision"] == "int8" and (checked["backend"] == "torch" or checkpoint_path.suffix.lower() != ".onnx"):
        raise _bad("precision", "int8 needs an int8 .onnx model (sfnet-export --int8) in ONNX Runtime or OpenVINO; "
                   f"{checkpoint_path.name} runs in fp32, fp16 or bf16")
    if checked["publish_flow"] and checked["backend"] in ("onnxruntime", "openvino"):
        raise _bad("publish_flow", f"needs the torch backend (an {checked['backend']} model returns class scores only)")
    if checked["compile"] and checked["backend"] in ("onnxruntime", "openvino"):
        raise _bad("compile", f"needs the torch backend (torch.compile); {checked['backend']} compiles its own graph")

    cameras = _as_list("cameras", raw["cameras"], str, "camera names")
    for camera in cameras:
        if not _CAMERA_RE.match(camera):
            raise _bad("cameras", f"{camera!r} is not a valid relative topic name "
                       "(letters, digits, _ and inner /, not starting with a digit)")
    if len(set(cameras)) != len(cameras):
        raise _bad("cameras", f"duplicate camera names in {cameras!r}")

    mask_classes = _as_list("mask_classes", raw["mask_classes"], str, "class names")
    tokens = [topic_token(name) for name in mask_classes]
    if len(set(tokens)) != len(tokens):
        raise _bad("mask_classes", f"names map to duplicate topic names: {dict(zip(mask_classes, tokens))}")

    warn, error = checked["input_timeout_warn"], checked["input_timeout_error"]
    if warn > 0 and error > 0 and error <= warn:
        raise _bad("input_timeout_error", f"{error!r} must be larger than input_timeout_warn ({warn!r}), or 0")

    return NodeConfig(
        checkpoint=checkpoint_path,
        backend=checked["backend"],
        device=device,
        precision=checked["precision"],
        compile=checked["compile"],
        threads=checked["threads"],
        input_size=(size[0], size[1]) if size else None,
        resize=checked["resize"],
        output_resolution=checked["output_resolution"],
        max_input_pixels=checked["max_input_pixels"],
        cameras=tuple(cameras),
        transport=checked["transport"],
        mask_classes=tuple(mask_classes),
        publish_color=checked["publish_color"],
        color_overlay=checked["color_overlay"],
        overlay_alpha=checked["overlay_alpha"],
        publish_confidence=checked["publish_confidence"],
        publish_timing=checked["publish_timing"],
        publish_flow=checked["publish_flow"],
        qos_reliability=checked["qos_reliability"],
        qos_depth=checked["qos_depth"],
        autostart=checked["autostart"],
        exit_on_shutdown=checked["exit_on_shutdown"],
        diagnostics_period=checked["diagnostics_period"],
        input_timeout_warn=warn,
        input_timeout_error=error,
        input_loss_warn=checked["input_loss_warn"],
    )


def topic_token(class_name: str) -> str:
    """A class name as one ROS topic-name token: ``"traffic light"`` -> ``"traffic_light"``.

    Lower case; every run of characters other than letters and digits becomes one ``_``; a
    leading digit gets a ``c`` in front (ROS names may not start with a digit).
    """
    token = re.sub(r"[^a-z0-9]+", "_", class_name.lower()).strip("_")
    if not token:
        token = "unnamed"
    if token[0].isdigit():
        token = "c" + token
    return token


def camera_prefix(camera: str) -> str:
    """Relative topic prefix of ``camera``: ``"front"`` -> ``"front/"``, ``""`` -> ``""``."""
    return f"{camera}/" if camera else ""


def parameter_descriptor(p: ParamSpec) -> Any:
    """The rcl_interfaces ParameterDescriptor declaring ``p`` (imports rcl_interfaces lazily)."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType

    descriptor = ParameterDescriptor(
        name=p.name,
        description=p.description,
        additional_constraints=p.constraints_text(),
        read_only=p.read_only,
    )
    if p.kind.endswith("_array"):
        # Empty arrays have no element type in YAML or on the command line, so a statically typed
        # array parameter with default [] rejects both `[]` and `[a, b]` (rclpy issue 912); the
        # element type is checked by config_from_values instead.
        descriptor.dynamic_typing = True
    else:
        descriptor.type = {
            "bool": ParameterType.PARAMETER_BOOL,
            "integer": ParameterType.PARAMETER_INTEGER,
            "double": ParameterType.PARAMETER_DOUBLE,
            "string": ParameterType.PARAMETER_STRING,
        }[p.kind]
    if p.value_range is not None:
        low, high = p.value_range
        if p.kind == "integer":
            descriptor.integer_range = [IntegerRange(from_value=int(low), to_value=int(high), step=1)]
        elif p.kind == "double":
            descriptor.floating_point_range = [
                FloatingPointRange(from_value=float(low), to_value=float(high), step=0.0)]
    return descriptor


def _default_text(p: ParamSpec) -> str:
    if p.kind == "bool":
        return "true" if p.default else "false"
    if p.kind == "string":
        return f'"{p.default}"' if p.default == "" else str(p.default)
    if p.kind.endswith("_array"):
        return "[" + ", ".join(str(v) for v in p.default) + "]"
    return str(p.default)


def parameters_markdown() -> str:
    """The parameter table of docs/node.md (the page embeds it; a test keeps them equal)."""
    lines = ["| Parameter | Type | Default | Constraints | Description |", "|---|---|---|---|---|"]
    for p in PARAMETERS:
        description = p.description.replace("|", "\\|").replace("<", "&lt;")
        lines.append(f"| `{p.name}` | {p.kind.replace('_', ' ')} | `{_default_text(p)}` | "
                     f"{p.constraints_text()} | {description} |")
    return "\n".join(lines) + "\n"
