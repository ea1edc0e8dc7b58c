"""``sfnet-train``: train SFNet from a recipe (also ``training/train.py`` for ``torchrun``)."""
from __future__ import annotations

import sys

from sfnet_core.cli.common import make_parser, run_command
from sfnet_core.errors import ConfigError
from sfnet_core.io_utils import check_writable_parent

DESCRIPTION = """Train SFNet from a recipe (training/configs/*.yaml).

  sfnet-train --config training/configs/synthetic_quick.yaml --out runs/quick
  sfnet-train --config RECIPE --out DIR --resume             # continue an interrupted run
  torchrun --nproc_per_node N training/train.py --config RECIPE --out DIR   # several GPUs / nodes

--out is a run folder: a new one, or one holding an interrupted run with --resume."""


def build_parser():
    p = make_parser("sfnet-train", DESCRIPTION)
    p.add_argument("--config", required=True, help="recipe YAML (training/configs/*.yaml)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, TensorBoard)")
    p.add_argument("--max-iters", type=int, default=None,
                   help="stop after this many iterations in total, keeping the full run's lr schedule")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="recipe overrides, e.g. schedule.iterations=1000 data.workers=0")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        from sfnet_core.training.config import load_train_config
        from sfnet_core.training.engine import train

        if args.max_iters is not None and args.max_iters < 1:
            raise ConfigError(f"--max-iters: must be >= 1, got {args.max_iters}")
        out = check_writable_parent(args.out, "--out")
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out: {args.out} is a file; the run needs a folder")
        cfg = load_train_config(args.config, args.overrides)
        if args.no_progress:
            cfg.runtime.progress = False
        result = train(cfg, args.out, max_iters=args.max_iters, resume=args.resume)
        if result.miou is not None:
            print(f"sfnet-train: {result.iteration} iterations, mIoU {result.miou:.4f} "
                  f"(best {result.best_miou:.4f})", file=sys.stderr)
        return 0

    return run_command("sfnet-train", run, interrupted="interrupted (continue with --resume)")


if __name__ == "__main__":
    sys.exit(main())
