"""``sfnet-export``: a checkpoint -> an ONNX model for ONNX Runtime or TensorRT."""
from __future__ import annotations

import json
import logging
import sys

from sfnet_core.cli.common import add_overwrite, make_parser, run_command
from sfnet_core.errors import ConfigError

DESCRIPTION = """Export a checkpoint to ONNX (opset 17+) for ONNX Runtime or TensorRT.

The graph takes the normalised float input (N, 3, H, W), H and W multiples of 32, and outputs
logits (N, C, H, W), or int64 labels (N, H, W) with --with-argmax. Class names, colours and the
normalisation are stored in the model's metadata.

  sfnet-export --checkpoint ck.pt --onnx model.onnx --height 512 --width 1024
  sfnet-export --checkpoint ck.pt --onnx model.onnx --dynamic --verify"""


def build_parser():
    from sfnet_core.export import DEFAULT_OPSET

    p = make_parser("sfnet-export", DESCRIPTION)
    p.add_argument("--checkpoint", required=True, help="checkpoint .pt (sfnet_core.checkpoint format)")
    p.add_argument("--onnx", required=True, help="output .onnx file (written atomically)")
    p.add_argument("--height", type=int, default=512, help="input height, a multiple of 32")
    p.add_argument("--width", type=int, default=1024, help="input width, a multiple of 32")
    p.add_argument("--batch", type=int, default=1, help="batch size of the traced input")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width axes")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset")
    p.add_argument("--with-argmax", action="store_true", help="output int64 labels (N, H, W) instead of logits")
    p.add_argument("--verify", action="store_true", help="compare ONNX Runtime against PyTorch after export")
    add_overwrite(p, "an existing --onnx file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def run() -> int:
        from sfnet_core.checkpoint import load_checkpoint
        from sfnet_core.export import export_onnx, verify_onnx
        from sfnet_core.io_utils import check_output

        if args.batch < 1:
            raise ConfigError(f"--batch: must be >= 1, got {args.batch}")
        out = check_output(args.onnx, inputs=[args.checkpoint], overwrite=args.overwrite, what="--onnx")
        ckpt = load_checkpoint(args.checkpoint)
        path = export_onnx(
            ckpt, out, height=args.height, width=args.width, batch=args.batch,
            dynamic=args.dynamic, opset=args.opset, with_argmax=args.with_argmax,
        )
        print(f"wrote {path}")
        if args.verify:
            report = verify_onnx(ckpt, path, args.height, args.width)
            print(json.dumps(report))
            if report["label_agreement"] < 0.999 or report["max_abs_diff"] > 1e-3:
                print(f"sfnet-export: error: {path}: ONNX Runtime disagrees with PyTorch: {report}", file=sys.stderr)
                return 1
        return 0

    return run_command("sfnet-export", run)


if __name__ == "__main__":
    sys.exit(main())
