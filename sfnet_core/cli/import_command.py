"""``sfnet-import``: a checkpoint of the authors' released code -> a project checkpoint."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from sfnet_core.cli.common import ArgumentParser, add_overwrite, make_parser, run_command
from sfnet_core.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from sfnet_core.errors import CheckpointError, ConfigError, require_file, require_torch_file
from sfnet_core.io_utils import atomic_write, check_output

PROG = "sfnet-import"
DESCRIPTION = """Import a checkpoint of the authors' released SFNet code (SFSegNets: SFNet-R18, R50,
R101, DF1, DF2, with or without the dsn heads) as a project checkpoint, for Segmenter,
sfnet-eval, sfnet-bag-eval and the node. The variant, the class count and fpn_dim are read
from the file's keys and shapes; every tensor is placed or the import fails naming the keys.
The file is read with weights_only=True (no pickled code runs).

  sfnet-import sfnet_r18_cityscapes.pth --out weights/sfnet_r18.pt
  sfnet-import sfnet_r18_cityscapes.pth --out weights/sfnet_r18_ac_false.pt --fam-align-corners false

--fam-align-corners: the released code sampled the FAM flows with grid_sample's default
align_corners=False until 2022-07, align_corners=True since; which one a published checkpoint
was trained with is not recorded (docs/model.md: evaluate both on a few labelled frames)."""


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> ArgumentParser:
    p = make_parser(PROG, DESCRIPTION)
    p.add_argument("file", help="released checkpoint (.pth): {'state_dict': ...} as the authors save it, "
                                "or a bare state dict; 'module.' prefixes allowed")
    p.add_argument("--out", required=True, help="project checkpoint to write (.pt, written atomically)")
    p.add_argument("--model", metavar="NAME",
                   help="the variant the file must hold (sfnet_resnet18, sfnet_resnet50, sfnet_resnet101, "
                        "sfnet_df1, sfnet_df2), checked; detected from the file when not given")
    p.add_argument("--classes", metavar="YAML",
                   help="class table YAML for the output, with as many classes as the released "
                        "classifier; Cityscapes' 19 train ids (built in) when not given")
    p.add_argument("--fam-align-corners", type=_bool, default=True, metavar="true|false",
                   help="align_corners of the FAMs' grid_sample, stored as the model option "
                        "fam_align_corners")
    add_overwrite(p, "an existing --out file")
    return p


def _released_state(obj: Any, source: str) -> tuple[dict, dict]:
    """(state dict, provenance) of a loaded released file."""
    from sfnet_core.models.pretrained import extract_state_dict  # lazy: torch (called after the checks)

    if isinstance(obj, dict) and obj.get("format") == "sfnet_ros/checkpoint":
        raise CheckpointError(f"{source}: already a project checkpoint (sfnet_ros/checkpoint); use it as it is")
    import numpy as np  # lazy: not needed for --help
    import torch  # lazy: not needed for --help and the refusals

    info: dict[str, Any] = {}
    if isinstance(obj, dict):
        for key in ("epoch", "mean_iu", "command"):
            value = obj.get(key)
            if isinstance(value, (np.generic, torch.Tensor)) and np.size(value) == 1:
                value = value.item()
            if isinstance(value, (int, float, str)) and not isinstance(value, bool):
                info[key] = round(value, 5) if isinstance(value, float) else value
    return extract_state_dict(obj, source), info


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        # The checks that need no torch come first: a refused command line (a missing or corrupt
        # file, an existing --out, an output that is an input, a bad class table) answers in a
        # fraction of a second.
        from sfnet_core.data.classes import ClassTable  # lazy: numpy, not needed for --help

        require_file(args.file)
        out = check_output(args.out, inputs=[args.file, args.classes], overwrite=args.overwrite)
        classes = ClassTable.from_yaml(args.classes) if args.classes else None
        require_torch_file(args.file, "weights file")

        # lazy: torch, after the checks above
        from sfnet_core.checkpoint import save_checkpoint
        from sfnet_core.models import build_model
        from sfnet_core.models.pretrained import read_weights_file
        from sfnet_core.models.released import RELEASED_ARCHS, import_released, project_options

        if args.model is not None and args.model not in RELEASED_ARCHS:
            raise ConfigError(f"--model: {args.model!r} is not a network of the released code; "
                              f"choose one of {', '.join(RELEASED_ARCHS)}")
        state, info = _released_state(read_weights_file(args.file), args.file)
        result = import_released(state, source=args.file, variant=args.model,
                                 fam_align_corners=args.fam_align_corners)
        layout = result.layout
        if classes is None:
            classes = ClassTable.cityscapes()
            if classes.num_classes != layout.num_classes:
                raise ConfigError(f"{args.file}: the released classifier (head.conv_last.1.weight) predicts "
                                  f"{layout.num_classes} classes, not Cityscapes' {classes.num_classes}; "
                                  f"give --classes with a {layout.num_classes}-class table")
        elif classes.num_classes != layout.num_classes:
            raise ConfigError(f"{args.classes}: has {classes.num_classes} classes but the released classifier "
                              f"(head.conv_last.1.weight) of {args.file} predicts {layout.num_classes}")
        options = project_options(layout, args.fam_align_corners)
        model = build_model(layout.variant, layout.num_classes, aux=layout.dsn, **options)
        model.load_state_dict(result.state_dict, strict=True)
        # published only when complete, never onto something that appeared at --out meanwhile
        with atomic_write(out, overwrite=args.overwrite, what="--out") as stage:
            save_checkpoint(stage, model, layout.variant, classes, model_options={"aux": layout.dsn, **options},
                            normalization={"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)})

        print(f"{args.file}: released {layout.released_arch} -> {layout.variant}, {layout.num_classes} classes, "
              f"fpn_dim {layout.fpn_dim}, dsn heads {'kept (aux_heads)' if layout.dsn else 'none'}")
        if info:
            print("  source: " + ", ".join(f"{k} {v}" for k, v in info.items()))
        print(f"  {len(result.state_dict)} tensors placed; {len(result.folded)} conv biases folded into "
              f"BatchNorm running means; fam_align_corners={str(args.fam_align_corners).lower()}")
        if result.dropped:
            print(f"  not imported ({len(result.dropped)}, loss-function buffers): {', '.join(result.dropped)}")
        if result.filled:
            print(f"  {len(result.filled)} BatchNorm num_batches_tracked counters absent, set to 0")
        print(f"wrote {out}")
        return 0

    return run_command(PROG, run)


if __name__ == "__main__":
    sys.exit(main())
