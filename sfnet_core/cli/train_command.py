"""``sfnet-train``: train SFNet from a recipe (also ``training/train.py`` for ``torchrun``)."""
from __future__ import annotations

import sys

from sfnet_core.cli.common import ArgumentParser, check_recipe, make_parser, positive_int, run_command
from sfnet_core.errors import ConfigError
from sfnet_core.evaluation.report_text import percent
from sfnet_core.io_utils import check_writable_parent
from sfnet_core.threads import prepare_process
from sfnet_core.training.config import load_train_config
from sfnet_core.training.run_folder import holds_only_stale_staging

DESCRIPTION = """Train SFNet from a recipe (training/configs/*.yaml).

  sfnet-train --config training/configs/synthetic_quick.yaml --out runs/quick
  sfnet-train --config RECIPE --out DIR --resume             # continue an interrupted run
  torchrun --nproc_per_node N training/train.py --config RECIPE --out DIR   # several GPUs / nodes

--out is a run folder: a new (or empty) one, or one holding an interrupted run with --resume.
sfnet-train never replaces or deletes a run: there is no --overwrite; a folder that already holds
files is refused without --resume. The recipe and the data are checked before anything is
written; a run that stops before its first checkpoint removes what it created, one that stops
later keeps its checkpoints (continue it with --resume). An empty recipe file is trained with
every default (the Cityscapes recipe) and says so on stderr."""


def build_parser() -> ArgumentParser:
    p = make_parser("sfnet-train", DESCRIPTION)
    p.add_argument("--config", required=True, help="recipe YAML (training/configs/*.yaml)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, TensorBoard)")
    p.add_argument("--max-iters", type=positive_int, default=None,
                   help="stop after this many iterations in total, keeping the full run's lr schedule "
                        "(default: the recipe's schedule.iterations)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="recipe overrides, e.g. schedule.iterations=1000 data.workers=0")
    return p


def main(argv: list[str] | None = None) -> int:
    prepare_process()  # before torch loads: training/*.py under torchrun come here without entry.launch
    args = build_parser().parse_args(argv)

    def run() -> int:
        out = check_writable_parent(args.out, "--out")
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out: {args.out} is a file; the run needs a folder")
        # staging files of a killed save are no run: a new run removes them (and says so)
        if out.is_dir() and not holds_only_stale_staging(out) and not args.resume:
            raise ConfigError(f"--out: {args.out} already holds files; pass --resume to continue the run in it, "
                              "or choose a new folder (sfnet-train never replaces a run)")
        check_recipe("sfnet-train", args.config, args.overrides, empty="training with every default")
        cfg = load_train_config(args.config, args.overrides)  # every value checked, still without torch
        from sfnet_core.training.engine import train  # lazy: torch, after the cheap checks

        if args.no_progress:
            cfg.runtime.progress = False
        result = train(cfg, args.out, max_iters=args.max_iters, resume=args.resume)
        if result.miou is not None:
            print(f"sfnet-train: {result.iteration} iterations, mIoU {percent(result.miou)} "
                  f"(best {percent(result.best_miou)})", file=sys.stderr)
        return 0

    status = run_command("sfnet-train", run,
                         interrupted="interrupted (continue with --resume if a checkpoint was written)")
    # only a process that imported torch can hold gloo threads; a refused command line stays cheap
    if "torch" in sys.modules:
        from sfnet_core.training.distributed import exit_torchrun_worker, is_torchrun_worker  # lazy: torch

        if is_torchrun_worker():  # issue #9: never finalise the interpreter beside live gloo threads
            exit_torchrun_worker(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
