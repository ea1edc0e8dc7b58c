"""``sfnet-eval``: mIoU of a checkpoint on a recipe's validation split, or of label files."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from sfnet_core.cli.common import add_overwrite, make_parser, run_command
from sfnet_core.errors import ConfigError

DESCRIPTION = """Evaluate a checkpoint on a recipe's validation split (checkpoint mode), or score
predicted train-id PNGs against ground truth (pred-dir mode). The report is printed as one JSON
object on stdout, a per-class table on stderr.

  sfnet-eval --config RECIPE --checkpoint best.pt [--mode whole|slide|msf] [--json report.json]
  sfnet-eval --pred-dir PRED --gt-dir GT [--classes config/classes/cityscapes.yaml]"""


def build_parser():
    from sfnet_core.evaluation.evaluate import MSF_SCALES

    p = make_parser("sfnet-eval", DESCRIPTION)
    ck = p.add_argument_group("checkpoint mode")
    ck.add_argument("--config", help="recipe YAML whose data section names the validation split")
    ck.add_argument("--checkpoint", help="checkpoint (.pt) to evaluate")
    ck.add_argument("--mode", choices=("whole", "slide", "msf"), default="whole",
                    help="whole image, sliding window, or multi-scale + flip")
    ck.add_argument("--window", type=int, nargs=2, metavar=("H", "W"),
                    help="sliding-window size (default for slide: the recipe's crop)")
    ck.add_argument("--scales", type=float, nargs="+", help=f"msf scales (default {' '.join(map(str, MSF_SCALES))})")
    ck.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ck.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16"), default="fp32",
                    help="inference precision (auto: bf16/fp16 on CUDA, fp32 on CPU)")
    ck.add_argument("--max-images", type=int, default=0, help="evaluate the first N images only (0 = all)")
    ck.add_argument("--save-pred", metavar="DIR",
                    help="write <name>.png (train ids) and <name>_color.png into this new folder")
    ck.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides, e.g. data.root=/data")
    pd = p.add_argument_group("pred-dir mode")
    pd.add_argument("--pred-dir", help="predicted train-id PNGs (any folder layout)")
    pd.add_argument("--gt-dir", help="ground-truth PNGs (e.g. Cityscapes gtFine/val)")
    pd.add_argument("--classes", help="class table YAML (default: Cityscapes)")
    pd.add_argument("--gt-format", choices=("auto", "train", "raw"), default="auto",
                    help="ground truth holds train ids, or raw ids mapped by the class table's id_map; "
                    "auto: raw for *_labelIds.png, train ids otherwise")
    pd.add_argument("--strict", action="store_true", help="fail when any file is unmatched")
    p.add_argument("--json", metavar="FILE", help="also write the report to FILE (atomically)")
    add_overwrite(p, "existing --json / --save-pred outputs (a --save-pred folder only if sfnet-eval wrote it)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        from sfnet_core.evaluation.evaluate import (
            PREDICTIONS_MARKER,
            CheckpointEvaluation,
            evaluate_checkpoint,
            evaluate_pred_dir,
        )
        from sfnet_core.evaluation.metrics import format_report
        from sfnet_core.io_utils import atomic_write, check_output

        inputs = [args.config, args.checkpoint, args.pred_dir, args.gt_dir, args.classes]
        json_path = check_output(args.json, inputs=inputs, overwrite=args.overwrite, what="--json") if args.json else None
        if args.pred_dir or args.gt_dir:
            if not (args.pred_dir and args.gt_dir):
                raise ConfigError("--pred-dir and --gt-dir go together")
            if args.checkpoint or args.config or args.save_pred:
                raise ConfigError("--pred-dir/--gt-dir cannot be combined with --checkpoint/--config/--save-pred")
            report = evaluate_pred_dir(args.pred_dir, args.gt_dir, args.classes, args.gt_format, args.strict)
            for path in report["unmatched_ground_truth_files"]:
                print(f"sfnet-eval: warning: no prediction for ground truth {path}", file=sys.stderr)
            for path in report["unmatched_prediction_files"]:
                print(f"sfnet-eval: warning: no ground truth for prediction {path}", file=sys.stderr)
        else:
            if not (args.config and args.checkpoint):
                raise ConfigError("give --config and --checkpoint, or --pred-dir and --gt-dir")
            if args.window is not None and min(args.window) < 1:
                raise ConfigError(f"--window: needs two positive sizes, got {' '.join(map(str, args.window))}")
            if args.scales is not None and min(args.scales) <= 0:
                raise ConfigError(f"--scales: every scale must be > 0, got {' '.join(map(str, args.scales))}")
            if args.max_images < 0:
                raise ConfigError(f"--max-images: must be >= 0, got {args.max_images}")
            from sfnet_core.training.config import load_train_config

            recipe = load_train_config(args.config, args.overrides)
            if args.save_pred:
                check_output(args.save_pred, inputs=[args.config], overwrite=args.overwrite, kind="dir",
                             what="--save-pred", is_previous_output=lambda p: (p / PREDICTIONS_MARKER).is_file())
            report = evaluate_checkpoint(CheckpointEvaluation(
                data=recipe.data, source=str(args.config), checkpoint=Path(args.checkpoint), mode=args.mode,
                window=tuple(args.window) if args.window else None,
                scales=tuple(args.scales) if args.scales else None, device=args.device,
                precision=args.precision, max_images=args.max_images,
                save_pred=Path(args.save_pred) if args.save_pred else None, overwrite=args.overwrite))
        print(format_report(report), file=sys.stderr)
        if json_path is not None:
            with atomic_write(json_path) as tmp:
                tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(json.dumps(report))
        return 0

    return run_command("sfnet-eval", run)


if __name__ == "__main__":
    sys.exit(main())
