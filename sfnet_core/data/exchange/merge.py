"""Add the labelled frames of one dataset folder to another (``sfnet-labels merge``).

The loop's last step: frames chosen and labelled in their own folder (``sfnet-extract --select
... --prelabel``, corrected in CVAT or Label Studio, ``sfnet-labels import``) join the training
set. Both folders must hold the same class table (a label PNG's values are train ids of its
folder's ``classes.yaml``: copying between two tables would silently relabel classes), and every
frame of the source must have a label. Everything is checked and staged inside the destination
before the first file is moved into place; the moves happen with Ctrl-C and SIGTERM held, so the
destination gets all the frames or none.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path, PurePosixPath

from sfnet_core.data.classes import ClassTable
from sfnet_core.data.exchange.layout import Frame, frames, read_classes, read_label
from sfnet_core.errors import DataError
from sfnet_core.io_utils import (
    OutputError,
    os_error_message,
    remove_staging,
    rename_noreplace,
    signals_held,
    staging_path,
)


def _same_table(source: ClassTable, dest: ClassTable, source_path: Path, dest_path: Path) -> None:
    """Refuse two tables that give a label value different meanings (names, colours, ignore index)."""
    def describe(table: ClassTable) -> list[tuple[str, tuple[int, ...]]]:
        return [(name, tuple(color)) for name, color in zip(table.names, table.colors, strict=True)]

    if describe(source) == describe(dest) and source.ignore_index == dest.ignore_index:
        return
    if source.names != dest.names:
        detail = f"classes {', '.join(source.names)} vs {', '.join(dest.names)}"
    elif source.ignore_index != dest.ignore_index:
        detail = f"ignore_index {source.ignore_index} vs {dest.ignore_index}"
    else:
        detail = "the same names in other colours"
    raise DataError(f"{source_path} and {dest_path} are different class tables ({detail}): the label "
                    "values would change meaning; write both folders in one table (sfnet-extract "
                    "--label-classes YAML maps a bag's labels through its id_map)")


def _target_key(frame: Frame, split: str | None, prefix: str) -> str:
    key = PurePosixPath(frame.key)
    folder = key.parent if split is None else PurePosixPath(split)
    return (folder / f"{prefix}{key.name}").as_posix()


def merge_labelled(source: Path, dest: Path, split: str | None = None, overwrite: bool = False,
                   prefix: str = "") -> dict[str, int]:
    """Copy every frame of ``source`` (image and label PNG) into ``dest``, under the same
    ``<split>/<name>`` or, with ``split``, all into that split; ``prefix`` goes before each name
    (frames of two drives may share header stamps, hence names). Returns counts (frames, replaced).

    Refused (DataError / OutputError, nothing written): different class tables, a source frame
    without a label or with a bad one, two source frames landing on one name, ``dest`` inside
    ``source`` or the other way round, and a name that exists in ``dest`` (unless ``overwrite``:
    then its image and label are replaced by the source's).
    """
    src_root, dest_root = source.resolve(), dest.resolve()
    if src_root == dest_root or src_root in dest_root.parents or dest_root in src_root.parents:
        raise OutputError(f"--into: {dest} and {source} are the same folder or one holds the other")
    table = read_classes(source)
    _same_table(table, read_classes(dest), source / "classes.yaml", dest / "classes.yaml")
    if split is not None and (not split or "/" in split or split.startswith(".")):
        raise DataError(f"--split: {split!r} is not a split folder name (e.g. train)")
    if "/" in prefix or prefix.startswith("."):
        raise DataError(f"--prefix: {prefix!r} cannot start a file name (no '/', not starting with '.')")
    existing = {frame.key: frame for frame in frames(dest)}
    plan: dict[str, Frame] = {}
    for frame in frames(source):
        if not frame.label.is_file():
            raise DataError(f"{frame.image}: has no label PNG ({frame.label}); label it, or import the "
                            "tool's labels, before merging")
        read_label(frame.label, table, frame.size())
        key = _target_key(frame, split, prefix)
        if key in plan:
            raise DataError(f"{frame.image} and {plan[key].image} both become {key} in {dest}")
        plan[key] = frame
    clash = [key for key in plan if key in existing or (dest / "labels" / f"{key}.png").exists()]
    if clash and not overwrite:
        raise OutputError(f"--into: {len(clash)} frame(s) of {source} exist in {dest} (e.g. {clash[0]}); "
                          "pass --prefix (e.g. --prefix drive2-) to keep both, or --overwrite to replace their "
                          "images and labels")
    staging = staging_path(dest / "merge")
    moves: list[tuple[Path, Path]] = []
    try:
        try:
            for key, frame in plan.items():
                for path, target in ((frame.image, dest / "images" / f"{key}{frame.image.suffix}"),
                                     (frame.label, dest / "labels" / f"{key}.png")):
                    staged = staging / path.relative_to(source)
                    staged.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, staged)
                    moves.append((staged, target))
        except OSError as exc:  # a full disk names the dataset written to, not the file read
            raise OutputError(f"--into: cannot write into {dest}: {os_error_message(exc)}") from None
        old_images = [existing[key].image for key in clash if key in existing
                      and existing[key].image.suffix != plan[key].image.suffix]
        with signals_held():
            for path in old_images:  # the same frame in another image format: replaced, not kept twice
                path.unlink()
            placed: list[Path] = []
            for staged, target in moves:
                target.parent.mkdir(parents=True, exist_ok=True)
                if overwrite:
                    os.replace(staged, target)
                    continue
                try:  # never over a file that appeared since the check (another tool, a person)
                    rename_noreplace(staged, target)
                except FileExistsError:
                    for path in placed:  # all or none: the frames placed so far were new, so they go
                        path.unlink()
                    raise OutputError(f"--into: {target} appeared while the frames were being merged; nothing "
                                      "was merged (pass --overwrite to replace it)") from None
                placed.append(target)
    finally:
        remove_staging(staging)
    return {"frames": len(plan), "replaced": len(clash)}


__all__ = ["merge_labelled"]
