"""``sfnet-eval``: mIoU of a checkpoint on a recipe's validation split, or of label files."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sfnet_core.cli.common import (
    ArgumentParser,
    add_overwrite,
    add_threads,
    apply_threads_option,
    check_recipe,
    device_spec,
    make_parser,
    non_negative_int,
    run_command,
)
from sfnet_core.errors import ConfigError, require_model_file
from sfnet_core.evaluation.report_text import format_report
from sfnet_core.io_utils import _resolved, atomic_write, check_output
from sfnet_core.threads import prepare_process

# sfnet_core.evaluation.scoring.MSF_SCALES and PREDICTIONS_TOOL, repeated so that parsing (and
# refusing) a command line does not import torch; test_evaluate / test_outputs check they agree.
MSF_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
PREDICTIONS_TOOL = "sfnet-eval --save-pred"

DESCRIPTION = """Evaluate a checkpoint on a recipe's validation split (checkpoint mode), or score
predicted train-id PNGs against ground truth (pred-dir mode). The report is printed as one JSON
object on stdout, a per-class table on stderr.

  sfnet-eval --config RECIPE --checkpoint best.pt [--mode whole|slide|msf] [--json report.json]
  sfnet-eval --pred-dir PRED --gt-dir GT [--classes config/classes/cityscapes.yaml]

Outputs (--json FILE, --save-pred DIR) are refused if they exist (unless --overwrite; a
--save-pred folder only if sfnet-eval wrote it and nothing in it was added or changed since) or
if they are, lie inside or contain an input (recipe, checkpoint, dataset, --pred-dir, --gt-dir).
--pred-dir and --gt-dir must be two separate folders (neither inside the other)."""


def build_parser() -> ArgumentParser:
    p = make_parser("sfnet-eval", DESCRIPTION)
    ck = p.add_argument_group("checkpoint mode")
    ck.add_argument("--config", help="recipe YAML whose data section names the validation split")
    ck.add_argument("--checkpoint", help="checkpoint to evaluate: .pt, or a self-describing .onnx (sfnet-export)")
    ck.add_argument("--mode", choices=("whole", "slide", "msf"), default="whole",
                    help="whole image, sliding window, or multi-scale + flip")
    ck.add_argument("--window", type=int, nargs=2, metavar=("H", "W"),
                    help="sliding-window size (default for slide: the recipe's crop)")
    ck.add_argument("--scales", type=float, nargs="+",
                    help=f"msf scales (default: {' '.join(map(str, MSF_SCALES))})")
    ck.add_argument("--device", type=device_spec, default="auto", help="auto, cpu, cuda or cuda:N")
    ck.add_argument("--backend", choices=("auto", "torch", "onnxruntime", "openvino"), default="auto",
                    help="auto: the fastest path here (on the CPU a .onnx in OpenVINO, else ONNX Runtime; "
                    "a .pt in OpenVINO bf16 where the CPU has native bf16, else PyTorch; "
                    "on a GPU PyTorch / ONNX Runtime); onnxruntime and openvino run a .pt through the export cache")
    ck.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16"), default="fp32",
                    help="inference precision (auto: bf16/fp16 on CUDA, fp32 on CPU)")
    add_threads(ck)
    ck.add_argument("--max-images", type=non_negative_int, default=0,
                    help="evaluate the first N images only (0 = all)")
    ck.add_argument("--save-pred", metavar="DIR",
                    help="write <name>.png (train ids) and <name>_color.png into this new folder (default: none)")
    ck.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides, e.g. data.root=/data")
    pd = p.add_argument_group("pred-dir mode")
    pd.add_argument("--pred-dir", help="predicted train-id PNGs (any folder layout)")
    pd.add_argument("--gt-dir", help="ground-truth PNGs (e.g. Cityscapes gtFine/val)")
    pd.add_argument("--classes", help="class table YAML (default: the Cityscapes table)")
    pd.add_argument("--gt-format", choices=("auto", "train", "raw"), default="auto",
                    help="ground truth holds train ids, or raw ids mapped by the class table's id_map; "
                    "auto: raw for *_labelIds.png, train ids otherwise")
    pd.add_argument("--strict", action="store_true", help="fail when any file is unmatched")
    p.add_argument("--json", metavar="FILE", help="also write the report to FILE, atomically (default: stdout only)")
    add_overwrite(p, "existing --json / --save-pred outputs (a --save-pred folder only if sfnet-eval wrote it)")
    return p


def main(argv: list[str] | None = None) -> int:
    prepare_process()  # before torch loads: training/*.py under torchrun come here without entry.launch
    args = build_parser().parse_args(argv)

    def run() -> int:
        inputs = [args.config, args.checkpoint, args.pred_dir, args.gt_dir, args.classes]
        json_path = None
        if args.json:
            json_path = check_output(args.json, inputs=inputs, overwrite=args.overwrite, what="--json")
        if args.pred_dir or args.gt_dir:
            if not (args.pred_dir and args.gt_dir):
                raise ConfigError("--pred-dir and --gt-dir go together")
            if args.checkpoint or args.config or args.save_pred:
                raise ConfigError("--pred-dir/--gt-dir cannot be combined with --checkpoint/--config/--save-pred")
            for option, folder in (("--pred-dir", args.pred_dir), ("--gt-dir", args.gt_dir)):
                if not Path(folder).exists():
                    raise ConfigError(f"{option}: {folder}: folder not found")
                if not Path(folder).is_dir():
                    raise ConfigError(f"{option}: {folder} is a file, not a folder")
            pred, gt = _resolved(args.pred_dir, "--pred-dir"), _resolved(args.gt_dir, "--gt-dir")
            if pred == gt:
                raise ConfigError(f"--pred-dir {args.pred_dir} and --gt-dir {args.gt_dir} are the same folder: "
                                  "every file would be scored against itself")
            if _inside(pred, gt) or _inside(gt, pred):
                inner, outer = (("--pred-dir", args.pred_dir), ("--gt-dir", args.gt_dir)) if _inside(pred, gt) \
                    else (("--gt-dir", args.gt_dir), ("--pred-dir", args.pred_dir))
                raise ConfigError(f"{inner[0]} {inner[1]} lies inside {outer[0]} {outer[1]}: the files of one would "
                                  "be read as the other's; give two separate folders")
        else:
            if not (args.config and args.checkpoint):
                raise ConfigError("give --config and --checkpoint, or --pred-dir and --gt-dir")
            if args.window is not None and min(args.window) < 1:
                raise ConfigError(f"--window: needs two positive sizes, got {' '.join(map(str, args.window))}")
            if args.scales is not None and min(args.scales) <= 0:
                raise ConfigError(f"--scales: every scale must be > 0, got {' '.join(map(str, args.scales))}")
            if args.save_pred:
                check_output(args.save_pred, inputs=inputs, overwrite=args.overwrite, kind="dir", what="--save-pred",
                             tool=PREDICTIONS_TOOL)
            if json_path is not None and args.save_pred and _inside(json_path, Path(args.save_pred)):
                raise ConfigError(f"--json: {args.json} lies inside the --save-pred folder {args.save_pred}")
            # answered before seconds of torch imports
            check_recipe("sfnet-eval", args.config, args.overrides, empty="every setting is the default")
            require_model_file(args.checkpoint)
        report = _evaluate(args)
        print(format_report(report), file=sys.stderr)
        if json_path is not None:
            with atomic_write(json_path, overwrite=args.overwrite, what="--json") as tmp:
                tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(json.dumps(report))
        return 0

    return run_command("sfnet-eval", run)


def _inside(child: Path, parent: Path) -> bool:
    child, parent = child.resolve(), parent.resolve()
    return child == parent or parent in child.parents


def _evaluate(args: argparse.Namespace) -> dict:
    # lazy: torch, after the checks above
    from sfnet_core.evaluation.scoring import CheckpointEvaluation, evaluate_checkpoint, evaluate_pred_dir

    if args.pred_dir:
        report = evaluate_pred_dir(args.pred_dir, args.gt_dir, args.classes, args.gt_format, args.strict)
        for path in report["unmatched_ground_truth_files"]:
            print(f"sfnet-eval: warning: no prediction for ground truth {path}", file=sys.stderr)
        for path in report["unmatched_prediction_files"]:
            print(f"sfnet-eval: warning: no ground truth for prediction {path}", file=sys.stderr)
        return report
    from sfnet_core.training.config import load_train_config  # lazy: torch (see above)

    apply_threads_option("sfnet-eval", args.threads)  # the backends follow torch's count
    # the recipe's data section names the validation split (and the dataset the outputs must avoid)
    cfg = load_train_config(args.config, list(args.overrides))
    source = args.config + (f" (with overrides {' '.join(args.overrides)})" if args.overrides else "")
    return evaluate_checkpoint(CheckpointEvaluation(
        data=cfg.data, source=source, checkpoint=Path(args.checkpoint), mode=args.mode,
        window=tuple(args.window) if args.window else None,
        scales=tuple(args.scales) if args.scales else None, device=args.device,
        precision=args.precision, max_images=args.max_images, backend=args.backend,
        save_pred=Path(args.save_pred) if args.save_pred else None, overwrite=args.overwrite))


if __name__ == "__main__":
    sys.exit(main())
