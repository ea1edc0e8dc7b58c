"""The authors' released SFNet checkpoints (SFSegNets) <-> this project's models.

Pure functions over state dicts (no file I/O): ``detect_layout`` tells the variant from the keys
and shapes, ``import_released`` renames every tensor to this project's names (folding the
redundant conv biases into BatchNorm), ``export_released`` goes back. ``sfnet-import``
(``sfnet_core.cli.import_command``) reads the file and writes a project checkpoint.

The released ``.pth`` files carry no digest of their weights (nothing recorded one when they were
written), so they are never loaded for inference directly: imported, every tensor is checked for
name and shape here, and the project checkpoint written by ``save_checkpoint`` records the
SHA-256 digest that every later load checks (``sfnet_core.checkpoint``).

Released layout (keys of ``net.state_dict()`` in SFSegNets, after removing the ``module.``
prefix that (Distributed)DataParallel adds; L decoder levels: 4 for ResNets, 3 for DF):

===============================  ===========================================================
released key                     this project
===============================  ===========================================================
``layer0.0.{0,1,3,4,6}.*``       ``backbone.conv1.{0,1,3,4,6}.*`` (deep stem: 3 convs, 2 BNs)
``layer0.1.*``                   ``backbone.bn1.*`` (the stem's last BN)
``layer{1..4}.*``                ``backbone.layer{1..4}.*`` (same block layout)
``backbone.*`` (DF1, DF2)        ``backbone.*``
``head.ppm.stages.i.1`` / ``.2``  ``decoder.ppm.stages.i.0`` / ``.1`` (index 0 is the pooling)
``head.ppm.bottleneck.{0,1}``    ``decoder.ppm.bottleneck.{0,1}``
``head.fpn_in.i.0`` (+bias)      ``decoder.lateral.i.0`` (bias folded into ``.1``, see below)
``head.fpn_in.i.1``              ``decoder.lateral.i.1``
``head.fpn_out_align.i.*``       ``decoder.align.i.*`` (``down_h``, ``down_l``, ``flow_make``)
``head.fpn_out.i.0.{0,1}``       ``decoder.smooth.i.{0,1}``
``head.conv_last.0.{0,1}``       ``decoder.fuse.{0,1}``
``head.conv_last.1``             ``decoder.classifier``
``head.dsn.i.{0,1,4}`` (+bias)   ``aux_heads.(L-2-i).head.{0,1,4}`` (reverse level order: the
                                 aux heads here run coarse to fine, ``dsn`` is indexed by level)
``criterion.*``                  not network weights (buffers of a loss module the released
                                 network holds as an attribute): dropped and named
===============================  ===========================================================

Bias folding. The released lateral 1x1 convs (``fpn_in``) and dsn 3x3 convs have a bias that
feeds a BatchNorm directly; here they have none. In eval mode
``BN(Wx + b) = gamma (Wx - (mean - b)) / sqrt(var + eps) + beta``, so storing
``running_mean - b`` is exact (computed in float64, rounded once to float32); in training mode
the batch mean absorbs ``b`` anyway, so it was never a free parameter.

Round trip. ``export_released(import_released(R))`` returns every tensor of R unchanged (same
names, shapes, dtypes and bytes) except each folded pair: the conv bias comes back as zeros and
the BN's ``running_mean`` as ``running_mean - bias``; the released network computes the same
function with either. ``import_released(export_released(S))`` returns S unchanged, bit for bit.
Loss-module buffers (``criterion.*``) are not carried over.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..errors import CheckpointError
from .pretrained import strip_prefix, summarize_keys

__all__ = ["RELEASED_ARCHS", "ReleasedFormatError", "ReleasedLayout", "ImportResult", "detect_layout",
           "released_name", "import_released", "export_released", "project_options"]

# Our variant -> the released constructors (``--arch`` of the authors' train.py), without and
# with the deep-supervision (dsn) heads.
RELEASED_ARCHS: dict[str, tuple[str, str]] = {
    "sfnet_resnet18": ("network.sfnet_resnet.DeepR18_SF_deeply", "network.sfnet_resnet.DeepR18_SF_deeply_dsn"),
    "sfnet_resnet50": ("network.sfnet_resnet.DeepR50_SF_deeply", "(DeepR50_SF_deeply with fpn_dsn=True)"),
    "sfnet_resnet101": ("network.sfnet_resnet.DeepR101_SF_deeply", "(DeepR101_SF_deeply with fpn_dsn=True)"),
    "sfnet_df1": ("network.sfnet_dfnet.AlignedDFnetv1", "network.sfnet_dfnet.AlignedDFnetv1_FPNDSN"),
    "sfnet_df2": ("network.sfnet_dfnet.AlignedDFnetv2", "network.sfnet_dfnet.AlignedDFnetv2_FPNDSN"),
}

# Architecture options of the released networks (everything else fixed by the variant). The
# released constructors hard-code fpn_dim: 128 (R18), 256 (R50, R101), 64 (DF1, DF2).
_RELEASED_OPTIONS: dict[str, Any] = {"stem": "deep", "dilate_last_stages": True, "upsample": "fam",
                                     "fuse": "bilinear", "flow_kernel_size": 3, "ppm_relu": False}
_RELEASED_FPN_DIM = {"sfnet_resnet18": 128, "sfnet_resnet50": 256, "sfnet_resnet101": 256,
                     "sfnet_df1": 64, "sfnet_df2": 64}
_RESNET_BLOCKS = {(False, (2, 2, 2, 2)): "sfnet_resnet18", (True, (3, 4, 6, 3)): "sfnet_resnet50",
                  (True, (3, 4, 23, 3)): "sfnet_resnet101"}
_DROPPED_PREFIXES = ("criterion.",)
_LIST = 20  # keys named per kind of problem


class ReleasedFormatError(CheckpointError):
    """A state dict that is not (exactly) one of the released SFNet networks."""


@dataclass(frozen=True)
class ReleasedLayout:
    """What a released state dict holds: our variant name and the sizes read from its tensors."""

    variant: str
    num_classes: int
    fpn_dim: int
    dsn: bool

    @property
    def family(self) -> str:
        return "dfnet" if self.variant.startswith("sfnet_df") else "resnet"

    @property
    def levels(self) -> int:
        """Decoder input levels: 4 (ResNet C2..C5) or 3 (DF)."""
        return 3 if self.family == "dfnet" else 4

    @property
    def released_arch(self) -> str:
        return RELEASED_ARCHS[self.variant][int(self.dsn)]


@dataclass
class ImportResult:
    """``state_dict`` in this project's names for ``build_model(layout.variant, layout.num_classes,
    aux=layout.dsn, **project_options(layout, ...))``; the lists name released keys folded
    (conv biases) and dropped (loss buffers), and our ``num_batches_tracked`` counters absent from
    the file (set to 0; they play no part in inference)."""

    layout: ReleasedLayout
    state_dict: dict[str, Tensor]
    folded: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    filled: list[str] = field(default_factory=list)


def _listing(items: list[str]) -> str:
    more = f" (+{len(items) - _LIST} more)" if len(items) > _LIST else ""
    return ", ".join(items[:_LIST]) + more


def _blocks(keys: set[str], stage: str) -> int:
    found = {int(m[1]) for k in keys if (m := re.match(rf"{re.escape(stage)}\.(\d+)\.conv1\.weight$", k))}
    return max(found) + 1 if found else 0


def _tensor4d(state: Mapping[str, Any], key: str, source: str) -> Tensor:
    value = state.get(key)
    if not isinstance(value, Tensor) or value.dim() != 4:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ReleasedFormatError(f"{source}: {key}: expected a 4-d conv weight, got {shape}")
    return value


def detect_layout(state: Mapping[str, Any], source: str = "<state dict>") -> ReleasedLayout:
    """Which released network ``state`` (``module.`` prefixes removed) is, from keys and shapes.

    Raises:
        ReleasedFormatError: not a released SFNet state dict (naming what was found instead).
    """
    keys = set(state)
    if any(k.startswith("head.flow_align_module.") for k in keys):
        raise ReleasedFormatError(
            f"{source}: an SFNet-Lite checkpoint (head.flow_align_module: the 'v2' head with gated dual "
            "flows); only the SFNet (ECCV 2020) networks R18/R50/R101/DF1/DF2 can be imported")
    if not any(k.startswith("head.") for k in keys):
        hint = (" (it looks like an ImageNet backbone file: use it as model.pretrained_backbone)"
                if any(k.startswith(("layer1.", "stage1.", "conv1.", "backbone.")) for k in keys) else "")
        raise ReleasedFormatError(f"{source}: not a released SFNet checkpoint: no decoder keys 'head.*'{hint}; "
                                  f"the file has {len(keys)} keys: {summarize_keys(sorted(keys))}")
    if "layer0.0.0.weight" in keys:
        stem = _tensor4d(state, "layer0.0.0.weight", source)
        if tuple(stem.shape[:2]) != (64, 3):
            raise ReleasedFormatError(f"{source}: layer0.0.0.weight has shape {tuple(stem.shape)}, not the "
                                      "deep stem's (64, 3, 3, 3)")
        bottleneck = "layer1.0.conv3.weight" in keys
        blocks = (_blocks(keys, "layer1"), _blocks(keys, "layer2"), _blocks(keys, "layer3"), _blocks(keys, "layer4"))
        variant = _RESNET_BLOCKS.get((bottleneck, blocks))
        if variant is None:
            kind = "Bottleneck" if bottleneck else "BasicBlock"
            raise ReleasedFormatError(f"{source}: a ResNet with {kind}s {blocks} per stage; the released "
                                      "SFNet ResNets are R18 (2, 2, 2, 2), R50 (3, 4, 6, 3), R101 (3, 4, 23, 3)")
    elif "backbone.stage1.0.weight" in keys:
        if "backbone.stage5.0.conv1.weight" in keys:
            variant = "sfnet_df1"
        elif "backbone.stage4_2.0.conv1.weight" in keys:
            variant = "sfnet_df2"
        else:
            raise ReleasedFormatError(f"{source}: a 'backbone.stage*' encoder that is neither DF1 (stage5) nor "
                                      "DF2 (stage4_2); STDC and other encoders are not supported")
    else:
        raise ReleasedFormatError(
            f"{source}: not a released SFNet checkpoint: neither the ResNet deep stem 'layer0.0.0.weight' nor "
            f"the DF encoder 'backbone.stage1.0.weight'; the file has {len(keys)} keys: "
            f"{summarize_keys(sorted(keys))}")
    fpn_dim = _tensor4d(state, "head.ppm.bottleneck.0.weight", source).shape[0]
    num_classes = _tensor4d(state, "head.conv_last.1.weight", source).shape[0]
    dsn = any(k.startswith("head.dsn.") for k in keys)
    return ReleasedLayout(variant, int(num_classes), int(fpn_dim), dsn)


# Decoder rules: our key (regex) -> released key (replacement); aux heads are handled apart.
_HEAD_RULES = [(re.compile(p), r) for p, r in (
    (r"decoder\.ppm\.stages\.(\d+)\.0\.(.+)", r"head.ppm.stages.\1.1.\2"),
    (r"decoder\.ppm\.stages\.(\d+)\.1\.(.+)", r"head.ppm.stages.\1.2.\2"),
    (r"decoder\.ppm\.bottleneck\.([01])\.(.+)", r"head.ppm.bottleneck.\1.\2"),
    (r"decoder\.lateral\.(\d+)\.([01])\.(.+)", r"head.fpn_in.\1.\2.\3"),
    (r"decoder\.align\.(\d+)\.(down_h|down_l|flow_make)\.weight", r"head.fpn_out_align.\1.\2.weight"),
    (r"decoder\.smooth\.(\d+)\.([01])\.(.+)", r"head.fpn_out.\1.0.\2.\3"),
    (r"decoder\.fuse\.([01])\.(.+)", r"head.conv_last.0.\1.\2"),
    (r"decoder\.classifier\.(weight|bias)", r"head.conv_last.1.\1"),
)]
_AUX_RULE = re.compile(r"aux_heads\.(\d+)\.head\.([014])\.(.+)")


def released_name(key: str, family: str, levels: int) -> str | None:
    """The released name of our state-dict ``key`` (``family`` "resnet" or "dfnet"), or None
    when the released network has no such tensor."""
    if key.startswith("backbone."):
        rest = key[len("backbone."):]
        if family == "dfnet":
            return key
        if rest.startswith("conv1."):
            return "layer0.0." + rest[len("conv1."):]
        if rest.startswith("bn1."):
            return "layer0.1." + rest[len("bn1."):]
        return rest if re.match(r"layer[1-4]\.", rest) else None
    aux = _AUX_RULE.fullmatch(key)
    if aux:
        index = levels - 2 - int(aux[1])
        return f"head.dsn.{index}.{aux[2]}.{aux[3]}" if index >= 0 else None
    for pattern, replacement in _HEAD_RULES:
        if pattern.fullmatch(key):
            return pattern.sub(replacement, key)
    return None


def _fold_pairs(levels: int, dsn: bool) -> list[tuple[str, str]]:
    """(released conv bias, released BN running_mean it folds into)."""
    heads = ("fpn_in", "dsn") if dsn else ("fpn_in",)
    return [(f"head.{h}.{i}.0.bias", f"head.{h}.{i}.1.running_mean") for h in heads for i in range(levels - 1)]


def project_options(layout: ReleasedLayout, fam_align_corners: bool = True) -> dict[str, Any]:
    """Every architecture option of ``layout.variant`` (our defaults, the file's fpn_dim)."""
    from .sfnet import variant_options  # lazy: the model modules are not needed to read a layout

    options = variant_options(layout.variant)
    options.update(fpn_dim=layout.fpn_dim, fam_align_corners=bool(fam_align_corners))
    return options


def import_released(state: Mapping[str, Any], source: str = "<state dict>", variant: str | None = None,
                    fam_align_corners: bool = True) -> ImportResult:
    """Map a released SFNet state dict (``module.`` prefixes allowed) onto this project's names.

    Every tensor must find its place and every tensor of our model must be filled (only
    ``num_batches_tracked`` counters may be absent), with equal shapes; loss-module buffers
    (``criterion.*``) are dropped and named. ``variant``, when given, must be what the file is.

    Raises:
        ReleasedFormatError: naming every key that could not be placed, every weight of ours not
            found, every shape mismatch (up to 20 of each).
    """
    from .sfnet import build_model  # lazy, as above

    state = strip_prefix(state)
    layout = detect_layout(state, source)
    if variant is not None and variant != layout.variant:
        raise ReleasedFormatError(f"{source}: holds a released {layout.variant} ({layout.released_arch}), "
                                  f"not {variant}")
    with torch.device("meta"):  # names and shapes only
        reference = build_model(layout.variant, layout.num_classes, aux=layout.dsn,
                                **project_options(layout, fam_align_corners)).state_dict()

    out: dict[str, Tensor] = {}
    ours_of: dict[str, str] = {}
    unfilled: list[str] = []
    shapes: list[str] = []
    filled: list[str] = []
    for key, ref in reference.items():
        name = released_name(key, layout.family, layout.levels)
        value = state.get(name) if name is not None else None
        if name is not None and isinstance(value, Tensor):
            ours_of[name] = key
            if tuple(value.shape) != tuple(ref.shape):
                shapes.append(f"{name} {tuple(value.shape)} (expected {tuple(ref.shape)})")
            else:
                out[key] = value
        elif key.endswith("num_batches_tracked"):
            out[key] = torch.zeros((), dtype=torch.long)
            filled.append(key)
        else:
            unfilled.append(name or key)

    folded: list[str] = []
    for bias_key, mean_key in _fold_pairs(layout.levels, layout.dsn):
        bias = state.get(bias_key)
        mean_ours = ours_of.get(mean_key)
        if not isinstance(bias, Tensor) or mean_ours not in out:
            continue
        mean = out[mean_ours]
        if tuple(bias.shape) != tuple(mean.shape):
            shapes.append(f"{bias_key} {tuple(bias.shape)} (expected {tuple(mean.shape)})")
            ours_of[bias_key] = mean_ours  # placed, but wrong: reported once, as a shape mismatch
            continue
        out[mean_ours] = (mean.double() - bias.double()).to(mean.dtype)
        folded.append(bias_key)

    consumed = set(ours_of) | set(folded)
    leftover = [k for k in state if k not in consumed]
    dropped = [k for k in leftover if k.startswith(_DROPPED_PREFIXES)]
    unplaced = [k for k in leftover if not k.startswith(_DROPPED_PREFIXES)]
    if unplaced or unfilled or shapes:
        problems = []
        if unplaced:
            problems.append(f"{len(unplaced)} keys that have no place in it: {_listing(unplaced)}")
        if unfilled:
            problems.append(f"{len(unfilled)} of its tensors missing: {_listing(unfilled)}")
        if shapes:
            problems.append(f"{len(shapes)} shape mismatches: {_listing(shapes)}")
        raise ReleasedFormatError(
            f"{source}: does not match the released {layout.variant} ({layout.released_arch}, "
            f"{layout.num_classes} classes, fpn_dim {layout.fpn_dim}): " + "; ".join(problems))
    ordered = {k: out[k] for k in reference}
    return ImportResult(layout, ordered, folded, dropped, filled)


def export_released(state: Mapping[str, Tensor], variant: str, options: Mapping[str, Any] | None = None
                    ) -> dict[str, Tensor]:
    """This project's ``state`` of ``variant`` (built with ``options``) under the released names.

    The released conv biases come back as zeros (see the module docstring for what the round
    trip preserves). ``fam_align_corners`` is not part of the weights: a model with ``True``
    matches the released code at HEAD (2022-07 on), ``False`` its earlier versions.

    Raises:
        ReleasedFormatError: a variant or option the released code cannot express, or a key
            with no released counterpart.
    """
    if variant not in RELEASED_ARCHS:
        raise ReleasedFormatError(f"{variant}: not a variant of the released code; "
                                  f"those are {', '.join(RELEASED_ARCHS)}")
    options = {k: v for k, v in (options or {}).items() if k not in ("aux", "pretrained_backbone")}
    wrong = [f"{k}={v!r} (released: {_RELEASED_OPTIONS[k]!r})" for k, v in options.items()
             if k in _RELEASED_OPTIONS and v != _RELEASED_OPTIONS[k]]
    fpn_dim = options.get("fpn_dim", _RELEASED_FPN_DIM[variant])
    if fpn_dim != _RELEASED_FPN_DIM[variant]:
        wrong.append(f"fpn_dim={fpn_dim!r} (released: {_RELEASED_FPN_DIM[variant]})")
    if wrong:
        raise ReleasedFormatError(f"{variant}: the released code has no model with {', '.join(wrong)}")
    family = "dfnet" if variant.startswith("sfnet_df") else "resnet"
    levels = 3 if family == "dfnet" else 4
    state = strip_prefix(state)
    dsn = any(k.startswith("aux_heads.") for k in state)
    folds = dict(_fold_pairs(levels, dsn))
    conv_of_bias = {b[: -len("bias")] + "weight": b for b in folds}
    out: dict[str, Tensor] = {}
    unplaced: list[str] = []
    for key, value in state.items():
        name = released_name(key, family, levels)
        if name is None:
            unplaced.append(key)
            continue
        out[name] = value
        if name in conv_of_bias:  # the released conv's bias, right after its weight
            out[conv_of_bias[name]] = torch.zeros(value.shape[0], dtype=value.dtype, device=value.device)
    if unplaced:
        raise ReleasedFormatError(f"{variant}: {len(unplaced)} keys have no released counterpart: "
                                  f"{_listing(unplaced)}")
    return out
