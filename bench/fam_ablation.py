#!/usr/bin/env python3
"""The paper's FAM ablation (Table 1(a): FPN + PPM 76.6 -> SFNet 78.7 mIoU on Cityscapes) in small.

Trains SFNet-R18 (``sfnet_resnet18``: FAM in the top-down path and in the final fusion) and the
FPN baseline with bilinear upsampling (``fpn_resnet18``, otherwise the same network) with the
same recipe, seed, data order and schedule, then evaluates both on the same held-out frames::

    python bench/fam_ablation.py --out runs/fam_ablation                       # synthetic_quick recipe
    python bench/fam_ablation.py --config training/configs/cityscapes_sfnet_r18.yaml --out runs/abl

Prints one line per model and a JSON summary (also written to ``OUT/fam_ablation.json``).
On synthetic scenes from scratch this is a sanity check of the implementation, not a
reproduction of the paper's Cityscapes numbers.
"""
from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sfnet_core.cli.common import make_parser
from sfnet_core.errors import SFNetError
from sfnet_core.io_utils import atomic_write
from sfnet_core.training.config import load_train_config
from sfnet_core.training.engine import train
from sfnet_core.yaml_config import to_dict

REPO = Path(__file__).resolve().parents[1]
MODELS = ("sfnet_resnet18", "fpn_resnet18")


def main(argv: list[str] | None = None) -> int:
    p = make_parser("fam_ablation", __doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "training/configs/synthetic_quick.yaml"), help="recipe YAML")
    p.add_argument("--out", required=True, help="one run folder per model is created inside")
    # comma-separated: a space-separated list would swallow the key=value overrides after it
    p.add_argument("--models", type=lambda text: [m for m in text.split(",") if m], default=",".join(MODELS),
                   help="comma-separated variants")
    p.add_argument("--resume", action="store_true", help="continue interrupted runs")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides for both runs")
    args = p.parse_args(argv)
    try:
        base = load_train_config(args.config, args.overrides)
    except SFNetError as exc:
        print(f"fam_ablation: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    rows = []
    for name in args.models:
        cfg = copy.deepcopy(base)
        cfg.model.name = name
        # Final weights are compared: validate only at the end so both see identical work.
        cfg.runtime.eval_interval = 0
        start = time.perf_counter()
        result = train(cfg, out / name, resume=args.resume)
        rows.append({"model": name, "miou": result.miou, "iterations": result.iteration,
                     "pixel_accuracy": (result.metrics or {}).get("pixel_accuracy"),
                     "per_class": (result.metrics or {}).get("per_class"),
                     "train_seconds": round(time.perf_counter() - start, 1)})
        print(f"{name:16s} mIoU {100 * result.miou:6.2f}%  ({result.iteration} iterations, "
              f"{rows[-1]['train_seconds']:.0f} s)", flush=True)
    summary = {"config": str(args.config), "overrides": args.overrides,
               "crop_size": list(base.data.crop_size), "batch_size": base.schedule.batch_size,
               "iterations": base.schedule.iterations, "seed": base.runtime.seed,
               "val_frames": to_dict(base.data).get("synthetic", {}).get("val_frames"), "results": rows}
    if len(rows) == 2 and all(r["miou"] is not None for r in rows):
        summary["delta_miou"] = rows[0]["miou"] - rows[1]["miou"]
        print(f"{rows[0]['model']} - {rows[1]['model']}: {100 * summary['delta_miou']:+.2f} mIoU points")
    with atomic_write(out / "fam_ablation.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "results"} |
                     {"miou": {r["model"]: r["miou"] for r in rows}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
