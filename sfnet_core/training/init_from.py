"""``model.init_from``: start a training run from the weights of a project checkpoint (fine-tuning).

The path from a published Cityscapes model to a custom label set: convert the authors' file
with ``sfnet-import``, point ``model.init_from`` at it, train on your data. What happens:

* every tensor of the checkpoint whose name and shape match the new model is loaded (backbone,
  decoder, FAMs, aux-head convolutions...);
* the class-dependent tensors (the classifier and the aux classifiers, found from the
  architecture: the tensors whose shape changes with the class count) are re-initialised when
  the class table differs, and the rows of classes present in both tables (same name, case and
  spaces ignored) are carried over, so ``car`` keeps what it learnt on Cityscapes;
* everything else that did not fit is reported with the reason (missing from the checkpoint,
  other shape), and non-tensor options that differ (``fam_align_corners``, ``stem``...) are
  named, since their weights load but mean something else.

Precedence: ``--resume`` with an existing ``last.pt`` wins (the run continues, ``init_from`` is
not read); ``init_from`` wins over ``model.pretrained_backbone`` (the backbone file is not read).
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from sfnet_core.checkpoint import load_checkpoint
from sfnet_core.data.classes import ClassTable
from sfnet_core.errors import CheckpointError, ConfigError
from sfnet_core.models import MODEL_VARIANTS, build_model, variant_options

__all__ = ["InitReport", "class_dependent_keys", "init_from_checkpoint"]

log = logging.getLogger(__name__)

_TRAIN_ONLY = ("aux", "pretrained_backbone")
_SHOW = 6


def _names(keys: list[str]) -> str:
    return ", ".join(keys[:_SHOW]) + (f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else "")


def _norm(name: str) -> str:
    return " ".join(name.lower().split())


@dataclass
class InitReport:
    """What ``init_from_checkpoint`` did (also logged, one line per kind)."""

    path: str
    loaded: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)   # class-dependent tensors, new class table
    carried_classes: list[str] = field(default_factory=list)  # classifier rows copied by class name
    missing: list[str] = field(default_factory=list)          # in the model, not in the checkpoint
    mismatched: list[str] = field(default_factory=list)       # "key: checkpoint (..) vs model (..)"
    unused: list[str] = field(default_factory=list)           # in the checkpoint, not in the model
    option_changes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"model.init_from {self.path}: loaded {len(self.loaded)} tensors"]
        if self.reinitialised:
            out.append(f"re-initialised for the new class table: {_names(self.reinitialised)}"
                       + (f"; rows carried over by class name: {', '.join(self.carried_classes)}"
                          if self.carried_classes else "; no class name in common"))
        if self.mismatched:
            out.append(f"did not fit (shape), freshly initialised: {_names(self.mismatched)}")
        if self.missing:
            out.append(f"not in the checkpoint, freshly initialised: {_names(self.missing)}")
        if self.unused:
            out.append(f"in the checkpoint but not in this model, not used: {_names(self.unused)}")
        if self.option_changes:
            out.append(f"model options differ from the checkpoint's: {'; '.join(self.option_changes)}")
        return out


def class_dependent_keys(name: str, num_classes: int, aux: bool, options: dict) -> set[str]:
    """State-dict keys whose shape depends on the class count (classifier, aux classifiers).

    Learnt from the architecture itself: the keys whose shapes differ between the model built
    for ``num_classes`` and for ``num_classes + 1`` (on the meta device: no memory, no init cost).
    """
    with torch.device("meta"):
        a = build_model(name, num_classes, aux=aux, **options).state_dict()
        b = build_model(name, num_classes + 1, aux=aux, **options).state_dict()
    return {k for k in a if k in b and a[k].shape != b[k].shape}


def init_from_checkpoint(model: nn.Module, path: str | os.PathLike, model_name: str, classes: ClassTable,
                         aux: bool, options: dict, mean=None, std=None) -> InitReport:
    """Load every tensor of the checkpoint at ``path`` that fits ``model`` (in place); see the module docstring.

    Raises ConfigError (naming ``model.init_from`` and the file) when the file is not a project
    checkpoint or when not a single tensor fits.
    """
    path = os.fspath(path)
    try:
        ck = load_checkpoint(path)
    except CheckpointError as exc:
        raise ConfigError(f"model.init_from: {exc} (a released SFNet file must first be converted "
                          "with sfnet-import)") from None
    report = InitReport(path)
    own = model.state_dict()
    stored = ck.state_dict
    class_keys = class_dependent_keys(model_name, classes.num_classes, aux, options) if classes.num_classes else set()
    same_table = ck.classes.names == classes.names
    for key, target in own.items():
        if key not in stored:
            if not key.endswith("num_batches_tracked"):
                report.missing.append(key)
            continue
        value = stored[key]
        if key in class_keys and not same_table:
            report.reinitialised.append(key)
            continue
        if value.shape != target.shape:
            report.mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(target.shape)}")
            continue
        report.loaded.append(key)
    report.unused = sorted(k for k in stored if k not in own)
    # BatchNorm's step counters (0-d) fit anything; only real weights show the file suits the model.
    if not [k for k in report.loaded if not k.endswith("num_batches_tracked")]:
        raise ConfigError(
            f"model.init_from: {path}: none of its {len(stored)} tensors fits {model_name!r} "
            f"(the checkpoint holds a {ck.model_name!r}); "
            + "; ".join(report.lines()[1:]))
    with torch.no_grad():
        for key in report.loaded:
            own[key].copy_(stored[key])
        # Classifier rows of classes both tables have (by name) keep what they learnt.
        ck_rows = {_norm(n): i for i, n in enumerate(ck.classes.names)}
        pairs = [(i, ck_rows[_norm(n)]) for i, n in enumerate(classes.names) if _norm(n) in ck_rows]
        if report.reinitialised and pairs:
            for key in report.reinitialised:
                value, target = stored[key], own[key]
                if value.shape[1:] != target.shape[1:] or value.shape[0] != ck.num_classes:
                    continue  # other shape apart from the class axis: leave it fresh
                for new, old in pairs:
                    target[new].copy_(value[old])
            report.carried_classes = [classes.names[i] for i, _ in pairs]
    # Compare what each side builds: an option left at its default equals that default written out
    # (sfnet-import writes every option; a recipe usually names none).
    defaults = variant_options(model_name) if model_name in MODEL_VARIANTS else {}
    ck_defaults = variant_options(ck.model_name) if ck.model_name in MODEL_VARIANTS else {}
    ck_options = {**ck_defaults, **{k: v for k, v in ck.model_options.items() if k not in _TRAIN_ONLY}}
    options = {**defaults, **options}
    for key in sorted(set(ck_options) | set(options)):
        if ck_options.get(key) != options.get(key):
            report.option_changes.append(
                f"{key}: checkpoint {ck_options.get(key, '(default)')!r}, recipe {options.get(key, '(default)')!r}")
    if ck.model_name != model_name:
        report.option_changes.insert(0, f"model: checkpoint {ck.model_name!r}, recipe {model_name!r}")
    if mean is not None and std is not None and not (
            all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(ck.mean, mean))
            and all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(ck.std, std))):
        report.option_changes.append(f"normalisation: checkpoint mean {list(ck.mean)} std {list(ck.std)}, "
                                     f"recipe mean {list(mean)} std {list(std)}")
    weights = [k for k in own if not k.endswith("num_batches_tracked")]
    fitted = [k for k in report.loaded if not k.endswith("num_batches_tracked")]
    lines = report.lines()
    if len(fitted) < len(weights) // 2:
        lines[0] += f" (only {len(fitted)} of the model's {len(weights)} weight tensors: is it the right file?)"
    log.log(logging.INFO if len(fitted) >= len(weights) // 2 else logging.WARNING, lines[0])
    for line in lines[1:]:
        # a changed class table is the point of fine-tuning: say it, do not warn about it
        log.log(logging.INFO if line.startswith("re-initialised") else logging.WARNING, line)
    return report
