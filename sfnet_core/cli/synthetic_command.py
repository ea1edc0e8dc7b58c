"""``sfnet-synthetic``: write a synthetic driving-scene dataset in the folder layout."""
from __future__ import annotations

import argparse
import sys

from sfnet_core.cli.common import add_overwrite, make_parser, run_command
from sfnet_core.data.synthetic_scenes.arguments import parse_size
from sfnet_core.errors import ConfigError
from sfnet_core.io_utils import check_output

DESCRIPTION = """Write procedural driving scenes with exact Cityscapes train-id labels in the
folder-dataset layout (images/<split>/, labels/<split>/, classes.yaml).

  sfnet-synthetic --out data/synth --frames 500 --size 256x512 --val 100"""


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("sfnet-synthetic", DESCRIPTION)
    p.add_argument("--out", required=True, help="output folder (new)")
    p.add_argument("--frames", type=int, default=100, help="number of frames in total")
    p.add_argument("--size", type=parse_size, default=(256, 512), help="HxW, e.g. 256x512")
    p.add_argument("--seed", type=int, default=0, help="scene seed (same seed and size = same pixels)")
    p.add_argument("--val", type=int, default=None, help="frames in the val split (default: 20%% of --frames)")
    add_overwrite(p, "a dataset previously written by sfnet-synthetic and unchanged since (a folder holding "
                     "anything else is refused)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        from sfnet_core.data.synthetic_scenes.dataset_writer import TOOL, write_folder_dataset  # lazy: OpenCV

        if args.frames < 1:
            raise ConfigError(f"--frames: must be >= 1, got {args.frames}")
        if args.seed < 0:
            raise ConfigError(f"--seed: must be >= 0, got {args.seed}")
        val = args.frames // 5 if args.val is None else args.val
        if not 0 <= val <= args.frames:
            raise ConfigError(f"--val: must be in 0..{args.frames}, got {val}")
        out = check_output(args.out, overwrite=args.overwrite, kind="dir", tool=TOOL)
        height, width = args.size
        root = write_folder_dataset(out, args.frames, height, width, seed=args.seed,
                                    splits={"train": args.frames - val, "val": val}, overwrite=args.overwrite,
                                    what="--out")
        print(f"wrote {args.frames} frames ({args.frames - val} train, {val} val) of "
              f"{height}x{width} to {root}")
        return 0

    return run_command("sfnet-synthetic", run)


if __name__ == "__main__":
    sys.exit(main())
