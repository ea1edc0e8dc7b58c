"""Parameters and multiply-accumulates of every model variant, next to the SFNet paper's figures.

The paper's "GFLOPs" (Tables 1, 4; 1024x1024 input) are multiply-accumulates: this script counts
MACs with ``torch.utils.flop_counter.FlopCounterMode`` (which reports 2 FLOPs per MAC, halved
here) on the ``meta`` device, so nothing is allocated or computed and even ResNet-101 at
1024x2048 takes well under a second. Only convolutions and matmuls are counted (BatchNorm,
activations, interpolation and grid sampling are not), which is why the ResNet rows land
1.5-2% under the paper's. Parameters exclude the training-only aux heads, as the paper's do.

Next to the paper's parameter counts stand the released code's (SFSegNets, 19 classes, without
the dsn heads): they are this code's plus the lateral convs' biases, which this code folds into
the following BatchNorm (``sfnet_core/models/released.py``). The DF rows follow the released code
(fpn_dim 64); the paper's DF1 figures (9.03M, 18.6 G) are close to what fpn_dim 128 would give
(9.24M, 18.5 G), and its DF2 count (10.53M) is below the DF2 encoder's own 17.47M.

Usage: ``python bench/model_stats.py [--variants sfnet_resnet18 sfnet_df1 ...]``.
Importable: ``collect_rows(variants)`` returns the table as a list of ``StatRow``.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

try:
    from sfnet_core.models import MODEL_VARIANTS, build_model
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from sfnet_core.models import MODEL_VARIANTS, build_model

SIZES = ((1024, 1024), (1024, 2048))

# (variant, options) -> (paper params in M, paper GMACs at 1024x1024); None where not given.
# Sources: Table 1(d) (R50/R101/ShuffleNetV2 FPN+PPM without and with FAM; DF1), Table 1(c)
# and Table 4 (R18 123.5, R101 417.5), Tables 3-4 (parameters). DF1 is listed twice: with the
# released fpn_dim 64 (the default) and with 128, whose figures are the paper's.
PAPER: dict[tuple[str, tuple[tuple[str, Any], ...]], tuple[float | None, float | None]] = {
    ("sfnet_resnet18", ()): (12.87, 123.5),
    ("fpn_resnet18", ()): (None, None),
    ("fcn_resnet18", ()): (None, None),
    ("sfnet_resnet50", (("upsample", "bilinear"),)): (None, 332.6),
    ("sfnet_resnet50", ()): (None, 337.1),
    ("sfnet_resnet101", (("upsample", "bilinear"),)): (None, 412.7),
    ("sfnet_resnet101", ()): (50.32, 417.5),
    ("sfnet_shufflenetv2", (("upsample", "bilinear"),)): (None, 17.8),
    ("sfnet_shufflenetv2", ()): (None, 18.1),
    ("sfnet_df1", (("fpn_dim", 128),)): (9.03, 18.6),
    ("sfnet_df1", ()): (9.03, 18.6),
    ("sfnet_df2", ()): (10.53, None),
}

# variant -> parameters of the released network for 19 classes without dsn heads (SFSegNets
# ``DeepR18_SF_deeply``, ``DeepR50_SF_deeply``, ``DeepR101_SF_deeply``, ``AlignedDFnetv1``,
# ``AlignedDFnetv2``; default options only).
RELEASED_PARAMS: dict[str, int] = {
    "sfnet_resnet18": 12_869_715,
    "sfnet_resnet50": 31_325_139,
    "sfnet_resnet101": 50_317_267,
    "sfnet_df1": 8_422_387,
    "sfnet_df2": 17_876_467,
}


@dataclass(frozen=True)
class StatRow:
    """One table row; ``gmacs`` maps (H, W) -> GMACs for one image."""

    variant: str
    options: dict[str, Any]
    params_m: float
    gmacs: dict[tuple[int, int], float]
    paper_params_m: float | None
    paper_gmacs_1024: float | None
    released_params_m: float | None = None

    @property
    def label(self) -> str:
        opts = " ".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.variant} ({opts})" if opts else self.variant

    @property
    def params_dev(self) -> float | None:
        """Relative deviation of the parameter count from the paper's (0.01 = 1%)."""
        return None if self.paper_params_m is None else self.params_m / self.paper_params_m - 1

    @property
    def gmacs_dev(self) -> float | None:
        """Relative deviation of GMACs at 1024x1024 from the paper's GFLOPs."""
        return None if self.paper_gmacs_1024 is None else self.gmacs[(1024, 1024)] / self.paper_gmacs_1024 - 1


def count_gmacs(variant: str, size: tuple[int, int], num_classes: int = 19, **options: Any) -> float:
    """GMACs of one eval-mode forward of a (1, 3, H, W) image, counted on the meta device."""
    with torch.device("meta"):
        model = build_model(variant, num_classes, **options).eval()
        x = torch.empty(1, 3, *size)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    return counter.get_total_flops() / 2e9


def count_params(variant: str, num_classes: int = 19, **options: Any) -> float:
    """Parameters in millions (inference model, no aux heads)."""
    with torch.device("meta"):
        model = build_model(variant, num_classes, **options)
    return sum(p.numel() for p in model.parameters()) / 1e6


def collect_rows(variants: Iterable[str] | None = None, sizes: Sequence[tuple[int, int]] = SIZES,
                 num_classes: int = 19) -> list[StatRow]:
    """Rows for the given variants (default: all), including their paper comparison rows."""
    wanted = list(MODEL_VARIANTS) if variants is None else list(variants)
    unknown = [v for v in wanted if v not in MODEL_VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(MODEL_VARIANTS)}")
    keys = [k for k in PAPER if k[0] in wanted] + [(v, ()) for v in wanted if (v, ()) not in PAPER]
    keys.sort(key=lambda k: (list(MODEL_VARIANTS).index(k[0]), len(k[1]) == 0))
    rows = []
    for variant, opts in keys:
        options = dict(opts)
        paper_params, paper_gmacs = PAPER.get((variant, opts), (None, None))
        released = RELEASED_PARAMS.get(variant) if not opts and num_classes == 19 else None
        rows.append(StatRow(
            variant=variant, options=options,
            params_m=count_params(variant, num_classes, **options),
            gmacs={s: count_gmacs(variant, s, num_classes, **options) for s in sizes},
            paper_params_m=paper_params, paper_gmacs_1024=paper_gmacs,
            released_params_m=None if released is None else released / 1e6))
    return rows


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(rows: Sequence[StatRow], sizes: Sequence[tuple[int, int]] = SIZES) -> str:
    """An aligned plain-text table."""
    header = ["model", "params M", "released M", "paper M", "dev"]
    header += [f"GMACs {h}x{w}" for h, w in sizes] + ["paper GFLOPs 1024x1024", "dev"]
    body = []
    for r in rows:
        body.append([r.label, f"{r.params_m:.2f}", _num(r.released_params_m, ".2f"),
                     _num(r.paper_params_m, ".2f"), _num(r.params_dev, "+.1%")]
                    + [f"{r.gmacs[s]:.1f}" for s in sizes]
                    + [_num(r.paper_gmacs_1024, ".1f"), _num(r.gmacs_dev, "+.1%")])
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]

    def fmt(line: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))

    lines = [fmt(header), "  ".join("-" * w for w in widths)] + [fmt(line) for line in body]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Parameters and GMACs of the SFNet variants next to the paper's figures. "
                    "The paper's 'GFLOPs' are multiply-accumulates (MACs); counted on the meta device.")
    parser.add_argument("--variants", nargs="+", metavar="NAME", choices=list(MODEL_VARIANTS),
                        help=f"restrict to these variants (default: all of {', '.join(MODEL_VARIANTS)})")
    parser.add_argument("--num-classes", type=int, default=19,
                        help="classifier outputs (default 19, Cityscapes)")
    args = parser.parse_args(argv)
    rows = collect_rows(args.variants, num_classes=args.num_classes)
    print(format_table(rows))
    print("\nGMACs: multiply-accumulates of convolutions and matmuls for one image (eval mode); the paper's\n"
          "'GFLOPs' follow the same MAC convention. Params exclude the training-only aux heads.\n"
          "released M: the authors' released network (19 classes), which adds a bias to each lateral\n"
          "conv (folded into the BatchNorm here). DF1/DF2 use the released fpn_dim 64; the DF2\n"
          "encoder alone has 17.5M parameters, so the paper's 10.53M cannot be met.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
