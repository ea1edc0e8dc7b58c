"""``sfnet-export``: a checkpoint -> a self-describing ONNX model (fp32, or int8 calibrated on frames)."""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from sfnet_core.cli.common import add_overwrite, make_parser, run_command
from sfnet_core.errors import ConfigError, DataError, SFNetError

DESCRIPTION = """Export a checkpoint to ONNX (opset 17+) for ONNX Runtime or TensorRT.

The graph takes the normalised float input (N, 3, H, W), H and W multiples of 32, and outputs
logits (N, C, H, W), or int64 labels (N, H, W) with --with-argmax. The model describes itself in
its metadata (model, class table, mean/std, input size, precision), so Segmenter.from_checkpoint,
sfnet-eval, sfnet-bag-eval and the node run the .onnx file alone (in ONNX Runtime).

--int8 quantises it statically (QDQ, per-channel int8 weights, uint8 activations), calibrated on
--frames frames of --calibration: a folder of images, one image, or a bag (--image-topic names
the image topic; needed when the bag holds several). Frames are preprocessed as the Segmenter
does at --height x --width with --resize.

  sfnet-export --checkpoint ck.pt --onnx model.onnx --height 512 --width 1024
  sfnet-export --checkpoint ck.pt --onnx model.onnx --dynamic --verify
  sfnet-export --checkpoint ck.pt --onnx int8.onnx --int8 --calibration frames/ --frames 16"""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
BAG_SUFFIXES = (".mcap", ".db3", ".bag")
# sfnet_core.export.DEFAULT_OPSET and inference.geometry.RESIZE_POLICIES, repeated here so that
# parsing the command line (--help, a usage error, a missing file) does not import torch (seconds);
# test_export.py checks they agree.
DEFAULT_OPSET = 17
RESIZE_POLICIES = ("stretch", "letterbox", "crop")


def build_parser():
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
    add_overwrite(p, "an existing --onnx file")
    return p


def _spread(count: int, wanted: int) -> list[int]:
    """``wanted`` indices spread evenly over ``range(count)``."""
    if wanted >= count:
        return list(range(count))
    return sorted({round(i * (count - 1) / max(1, wanted - 1)) for i in range(wanted)})


def folder_frames(path: Path, frames: int) -> Iterator:
    """RGB uint8 frames from an image file or the images of a folder (sorted by name)."""
    import cv2

    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"--calibration: {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    for index in _spread(len(files), frames):
        image = cv2.imread(str(files[index]), cv2.IMREAD_COLOR)
        if image is None:
            raise DataError(f"--calibration: {files[index]} is not a readable image")
        yield image[..., ::-1].copy()


BagFrames = Callable[[Path, "str | None", int], Iterator]


def main(argv: list[str] | None = None, bag_frames: BagFrames | None = None) -> int:
    """``sfnet-export``. ``bag_frames(path, image_topic, count)`` yields RGB calibration frames from a
    bag: the ROS layer passes its bag reader (``sfnet_ros.tools.export``, the installed command),
    so this library never imports it; without it a bag is refused with a pointer to that command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def run() -> int:
        from sfnet_core.errors import require_file

        require_file(args.checkpoint, "checkpoint file")  # before seconds of torch imports
        from sfnet_core.checkpoint import load_checkpoint
        from sfnet_core.export import ExportError, export_onnx, quantize_int8, verify_onnx
        from sfnet_core.io_utils import atomic_write, check_output, staging_path

        if args.batch < 1:
            raise ConfigError(f"--batch: must be >= 1, got {args.batch}")
        if args.height < 32 or args.width < 32 or args.height % 32 or args.width % 32:
            raise ConfigError(f"--height/--width: must be positive multiples of 32, got {args.height}x{args.width}")
        calibration = Path(args.calibration) if args.calibration else None
        if args.int8:
            if calibration is None:
                raise ConfigError("--int8: needs --calibration (a folder of images or a bag)")
            if args.dynamic:
                raise ConfigError("--int8: an int8 model is calibrated at one input size; drop --dynamic")
            if args.frames < 1:
                raise ConfigError(f"--frames: must be >= 1, got {args.frames}")
            if not calibration.exists():
                raise ConfigError(f"--calibration: {calibration} not found")
            is_bag = calibration.suffix.lower() in BAG_SUFFIXES or (calibration / "metadata.yaml").is_file()
            if args.image_topic and not is_bag:
                raise ConfigError(f"--image-topic: only for a bag; {calibration} is not one")
            if is_bag and bag_frames is None:
                raise ConfigError(f"--calibration: {calibration} is a bag; reading bags needs the ROS layer: "
                                  "run the sfnet-export command (sfnet_ros.tools.export)")
        elif calibration is not None or args.image_topic:
            raise ConfigError("--calibration / --image-topic: only with --int8")
        out = check_output(args.onnx, inputs=[args.checkpoint, args.calibration], overwrite=args.overwrite,
                           what="--onnx")
        ckpt = load_checkpoint(args.checkpoint)
        prep = None
        if args.int8:
            from sfnet_core.inference import Segmenter

            # Calibration frames are preprocessed exactly as the Segmenter will feed the model.
            prep = Segmenter(ckpt.build_model(), ckpt.classes, ckpt.mean, ckpt.std, device="cpu", precision="fp32",
                             input_size=(args.height, args.width), resize=args.resize, channels_last=False)
            source = bag_frames(calibration, args.image_topic, args.frames) if is_bag else \
                folder_frames(calibration, args.frames)
            batches = [prep.preprocess(frame).numpy() for frame in source]
            if not batches:
                raise DataError(f"--calibration: no frames read from {calibration}")
        # Written to a staging file next to --onnx and published only when complete, never onto
        # something that appeared there meanwhile (sfnet_core.io_utils.atomic_write).
        with atomic_write(out, overwrite=args.overwrite, what="--onnx") as stage, _naming(stage, out):
            if not args.int8:
                export_onnx(ckpt, stage, height=args.height, width=args.width, batch=args.batch,
                            dynamic=args.dynamic, opset=args.opset, with_argmax=args.with_argmax)
            else:
                # The fp32 export is an intermediate: a hidden staging folder next to the output,
                # removed on success, errors, Ctrl-C and SIGTERM alike.
                work = staging_path(out, "work")
                try:
                    work.mkdir()
                    fp32 = export_onnx(ckpt, work / "fp32.onnx", height=args.height, width=args.width,
                                       batch=args.batch, opset=args.opset, with_argmax=args.with_argmax)
                    try:
                        source_name = f"{calibration.name} ({len(batches)} frames)"
                        quantize_int8(fp32, stage, batches, calibration_source=source_name,
                                      reduce_range=args.reduce_range)
                    except (ExportError, OSError):
                        raise
                    except Exception as exc:
                        raise ExportError(f"{out}: int8 quantisation failed: {type(exc).__name__}: {exc}") from None
                finally:
                    shutil.rmtree(work, ignore_errors=True)
        if not args.int8:
            print(f"wrote {out}")
            if args.verify:
                return _report(out, verify_onnx(ckpt, out, args.height, args.width, batch=args.batch), 0.999)
            return 0
        print(f"wrote {out} (int8, calibrated on {len(batches)} frames of {calibration})")
        if args.verify:
            import numpy as np

            inputs = np.concatenate(batches)
            return _report(out, verify_onnx(ckpt, out, args.height, args.width, inputs=inputs), 0.95)
        return 0

    return run_command("sfnet-export", run)


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
