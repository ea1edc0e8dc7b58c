"""``sfnet-export``: a checkpoint -> a self-describing ONNX model (fp32, or int8 calibrated on frames).

A thin command over ``sfnet_core.onnx``: parse and check the arguments, call the library, print.
The ROS layer's ``sfnet-export`` (``sfnet_ros.tools.export_with_bags``) is this command with its
bag reader handed in.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sfnet_core.cli.common import add_overwrite, add_threads, apply_threads_option, make_parser, run_command
from sfnet_core.errors import ConfigError, DataError, SFNetError, require_torch_file
from sfnet_core.io_utils import atomic_write, check_output
from sfnet_core.onnx.calibration import BagFrames, CalibrationSource

if TYPE_CHECKING:
    import numpy as np

    from sfnet_core.checkpoint import Checkpoint

DESCRIPTION = """Export a checkpoint to ONNX (opset 17+) for ONNX Runtime or TensorRT.

The graph takes the normalised float input (N, 3, H, W), H and W multiples of 32, and outputs
logits (N, C, H, W), or int64 labels (N, H, W) with --with-argmax. The model describes itself in
its metadata (model, class table, mean/std, input size, precision), so Segmenter.from_checkpoint,
sfnet-eval, sfnet-bag-eval and the node run the .onnx file alone (in ONNX Runtime).

--int8 quantises it statically (QDQ, per-channel int8 weights, uint8 activations), calibrated on
--frames frames of --calibration: a folder of images, one image, or a bag (--image-topic names
the image topic; needed when the bag holds several). Frames are preprocessed as the Segmenter
does at --height x --width with --resize. Calibration shows a progress bar on a terminal.

  sfnet-export --checkpoint ck.pt --onnx model.onnx --height 512 --width 1024
  sfnet-export --checkpoint ck.pt --onnx model.onnx --dynamic --verify
  sfnet-export --checkpoint ck.pt --onnx int8.onnx --int8 --calibration frames/ --frames 16"""

# sfnet_core.onnx.export.DEFAULT_OPSET and inference.geometry.RESIZE_POLICIES, repeated here so that
# parsing the command line (--help, a usage error, a missing file) does not import torch (seconds);
# test_export.py checks they agree.
DEFAULT_OPSET = 17
RESIZE_POLICIES = ("stretch", "letterbox", "crop")
MIN_AGREEMENT = {"fp32": 0.999, "int8": 0.95}  # labels ONNX Runtime and PyTorch must agree on (--verify)


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("sfnet-export", DESCRIPTION)
    p.add_argument("--checkpoint", required=True, help="checkpoint .pt (sfnet_core.checkpoint format)")
    p.add_argument("--onnx", required=True, help="output .onnx file (written atomically)")
    p.add_argument("--height", type=int, default=512, help="input height, a multiple of 32")
    p.add_argument("--width", type=int, default=1024, help="input width, a multiple of 32")
    p.add_argument("--batch", type=int, default=1, help="batch size of the traced input (fixed unless --dynamic)")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width axes")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset")
    p.add_argument("--with-argmax", action="store_true", help="output int64 labels (N, H, W) instead of logits")
    p.add_argument("--verify", action="store_true",
                   help="compare ONNX Runtime against PyTorch after export (fp32: a random input, must agree "
                   "on 99.9%% of labels; int8: the calibration frames, must agree on 95%%)")
    q = p.add_argument_group("int8 static quantisation")
    q.add_argument("--int8", action="store_true", help="quantise to int8 (needs --calibration)")
    q.add_argument("--calibration", metavar="PATH", help="image folder, image file or bag of calibration frames")
    q.add_argument("--image-topic", metavar="TOPIC", help="image topic of a --calibration bag")
    q.add_argument("--frames", type=int, default=16, help="calibration frames, spread evenly over the source")
    q.add_argument("--resize", choices=RESIZE_POLICIES, default="stretch",
                   help="how calibration frames reach --height x --width (as the Segmenter's resize)")
    q.add_argument("--reduce-range", action="store_true",
                   help="7-bit weights (avoids int16 saturation on AVX2 / AVX-512 CPUs without VNNI)")
    add_threads(p)
    add_overwrite(p, "an existing --onnx file")
    return p


def _check_arguments(args: argparse.Namespace, bag_frames: BagFrames | None) -> CalibrationSource | None:
    """Every check that needs no torch (one-line errors in well under a second); the int8
    calibration source, or None for an fp32 export."""
    require_torch_file(args.checkpoint)
    if args.batch < 1:
        raise ConfigError(f"--batch: must be >= 1, got {args.batch}")
    if args.height < 32 or args.width < 32 or args.height % 32 or args.width % 32:
        raise ConfigError(f"--height/--width: must be positive multiples of 32, got {args.height}x{args.width}")
    if not args.int8:
        if args.calibration is not None or args.image_topic:
            raise ConfigError("--calibration / --image-topic: only with --int8")
        return None
    if args.calibration is None:
        raise ConfigError("--int8: needs --calibration (a folder of images or a bag)")
    if args.dynamic:
        raise ConfigError("--int8: an int8 model is calibrated at one input size; drop --dynamic")
    return CalibrationSource(Path(args.calibration), args.frames, args.image_topic, bag_frames)


def main(argv: list[str] | None = None, bag_frames: BagFrames | None = None) -> int:
    """``sfnet-export``. ``bag_frames(path, image_topic, count)`` yields RGB calibration frames from a
    bag: the ROS layer passes its bag reader (``sfnet_ros.tools.export_with_bags``, the installed
    command), so this library never imports it; without it a bag is refused with a pointer to that
    command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def run() -> int:
        source = _check_arguments(args, bag_frames)
        out = check_output(args.onnx, inputs=[args.checkpoint, args.calibration], overwrite=args.overwrite,
                           what="--onnx")
        from sfnet_core.checkpoint import load_checkpoint  # lazy: torch, not needed for the checks above
        from sfnet_core.onnx.export import export_onnx, verify_onnx  # lazy: torch
        from sfnet_core.onnx.quantize import export_int8  # lazy: torch, onnxruntime

        apply_threads_option("sfnet-export", args.threads)  # tracing, calibration, --verify
        ckpt = load_checkpoint(args.checkpoint)
        batches: list[np.ndarray] | None = None  # int8: the calibration batches
        described = ""
        if source is not None:
            batches = _calibration_batches(ckpt, source, args)
            described = source.describe(len(batches))
        # Written to a staging file next to --onnx and published only when complete, never onto
        # something that appeared there meanwhile (sfnet_core.io_utils.atomic_write).
        with atomic_write(out, overwrite=args.overwrite, what="--onnx") as stage, _naming(stage, out):
            if batches is None:
                export_onnx(ckpt, stage, height=args.height, width=args.width, batch=args.batch,
                            dynamic=args.dynamic, opset=args.opset, with_argmax=args.with_argmax)
            else:
                export_int8(ckpt, stage, batches, height=args.height, width=args.width, batch=args.batch,
                            opset=args.opset, with_argmax=args.with_argmax, reduce_range=args.reduce_range,
                            calibration_source=described, progress=True)
        if batches is None:
            print(f"wrote {out}")
        else:
            print(f"wrote {out} (int8, calibrated on {len(batches)} frames of {args.calibration})")
        if not args.verify:
            return 0
        if batches is None:  # fp32: a random input
            return _report(out, verify_onnx(ckpt, out, args.height, args.width, batch=args.batch, progress=True),
                           MIN_AGREEMENT["fp32"])
        import numpy as np  # lazy: numpy, not needed for --help

        # int8: the calibration frames (a random input says little about an int8 model)
        report = verify_onnx(ckpt, out, args.height, args.width, inputs=np.concatenate(batches), progress=True)
        return _report(out, report, MIN_AGREEMENT["int8"])

    return run_command("sfnet-export", run)


def _calibration_batches(ckpt: Checkpoint, source: CalibrationSource, args: argparse.Namespace) -> list[np.ndarray]:
    """The calibration frames as the Segmenter will feed the model: normalised (1, 3, H, W) float32."""
    from sfnet_core.inference import Segmenter  # lazy: torch

    prep = Segmenter(ckpt.build_model(), ckpt.classes, ckpt.mean, ckpt.std, device="cpu", precision="fp32",
                     input_size=(args.height, args.width), resize=args.resize, channels_last=False)
    batches = [prep.preprocess(frame).numpy() for frame in source.read()]
    if not batches:
        raise DataError(f"--calibration: no frames read from {source.path}")
    return batches


@contextlib.contextmanager
def _naming(stage: Path, out: Path) -> Iterator[None]:
    """Errors raised while writing the staging file name the output the user asked for."""
    try:
        yield
    except SFNetError as exc:
        text = str(exc).replace(str(stage), str(out))
        if text == str(exc):
            raise
        try:
            renamed = type(exc)(text)
        except Exception:
            raise exc from None
        raise renamed from None


def _report(path: Path, report: dict, min_agreement: float) -> int:
    print(json.dumps(report))
    logits_bad = report["max_abs_diff"] > 1e-3 and min_agreement >= 0.999  # int8 logits differ by design
    if report["label_agreement"] < min_agreement or logits_bad:
        print(f"sfnet-export: error: {path}: ONNX Runtime disagrees with PyTorch: {report}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
