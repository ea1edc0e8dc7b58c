"""``sfnet-extract``: turn a recorded bag into a folder dataset ready for labelling and ``sfnet-train``.

    sfnet-extract --bag drive.mcap --image-topic /front/image_raw --out my_data --rate 2 --val-fraction 0.2

writes PNG images named after their header stamps (``<sec>_<nanosec>.png``, so they sort in time),
label PNGs of the same names (from ``--label-topic``, or left to the labelling tool) and
``classes.yaml``, the class table the labels must use (train ids, no id_map). Layouts:

* default: ``images/``, ``labels/`` (``data.train_split: null`` in a recipe reads this);
* ``--split NAME``: ``images/NAME/``, ``labels/NAME/``;
* ``--val-fraction F``: ``images/train/`` + ``images/val/`` (and ``labels/...``), what
  ``training/configs/custom_template.yaml`` reads (``train_split: train``, ``val_split: val``).
  The split is by time, deterministic: the kept frames in stamp order, the last
  ``round(F * N)`` (at least one) in ``val``. Neighbouring frames of a drive are near copies of
  each other; a random split would put copies of training frames into the validation set.

Label values must be train ids of the class table (or its ignore index) and labels must have
their image's size; anything else is an error, not a silently wrong dataset. The folder appears
only when complete (staged next to it, renamed in); ``--overwrite`` replaces only a folder that
sfnet-extract wrote and nobody changed since (a record of its files, with their SHA-256, is kept
in ``.sfnet-manifest.json``: ``sfnet_core.io_utils``), so labelling work is never overwritten.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm import tqdm

from sfnet_core.cli.common import (
    add_overwrite,
    add_threads,
    device_spec,
    fraction,
    make_parser,
    positive_float,
    positive_int,
    run_command,
)
from sfnet_core.data.classes import ClassTable
from sfnet_core.errors import SFNetError, require_model_file
from sfnet_core.io_utils import MANIFEST, atomic_write, check_output, foreign_files
from sfnet_ros.conversions import ImageConversionError
from sfnet_ros.tools.bag_io import (
    BagError,
    BagReader,
    decode_image,
    decode_labels,
    read_label_classes,
    stamp_name,
    write_png,
)
from sfnet_ros.tools.select_frames import Candidate, candidate_stamps, choose, score_frames, selection_csv

TOOL = "sfnet-extract"  # the manifest's tool name (sfnet_core.io_utils): what --overwrite may replace
MARKER = MANIFEST  # the record of the files this tool wrote


def class_template(table: ClassTable, source: str) -> str:
    """YAML class table for labelling: train ids only (an id_map would remap the label PNGs)."""
    data = table.to_dict()
    data.pop("id_map", None)
    header = (f"# Class table for this dataset (from {source}).\n"
              f"# Label PNGs hold train ids 0..{table.num_classes - 1}; {table.ignore_index} = ignore.\n")
    body = yaml.safe_dump({"ignore_index": data["ignore_index"]}, sort_keys=False)
    body += "classes:\n" + "".join(
        f"  - {{id: {c['id']}, name: {c['name']}, color: [{', '.join(map(str, c['color']))}]}}\n"
        for c in data["classes"])
    return header + body


def is_previous_extract(path: Path) -> bool:
    """True when ``path`` was written by sfnet-extract and nothing in it was added or changed since."""
    return foreign_files(path, TOOL) == []


def split_by_time(names: list[str], val_fraction: float | None, split: str | None) -> dict[str, str | None]:
    """file stem -> split folder (None = flat). ``names`` sort in time (stamp names)."""
    ordered = sorted(names)
    if val_fraction is None:
        return {name: split for name in ordered}
    n_val = max(1, round(val_fraction * len(ordered)))
    if n_val >= len(ordered):
        raise BagError(f"--val-fraction {val_fraction}: {len(ordered)} kept frame(s) are too few for a train and "
                       "a val split (keep more frames: --every / --rate)")
    return {name: ("val" if i >= len(ordered) - n_val else "train") for i, name in enumerate(ordered)}


def extract(
    bag: str | os.PathLike,
    image_topic: str,
    out: str | os.PathLike,
    every: int = 1,
    rate_hz: float | None = None,
    classes: str | os.PathLike | None = None,
    label_topic: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    split: str | None = None,
    val_fraction: float | None = None,
    label_classes: str | os.PathLike | None = None,
    selection: Selection | None = None,
) -> dict[str, Any]:
    """Extract; returns a summary dict. Raises SFNetError subclasses on bad input (see module doc).

    ``label_classes`` (instead of ``classes``): the labels' class table, whose ``id_map`` maps the
    bag's label values (e.g. Cityscapes labelIds) to the train ids written into the label PNGs.
    ``selection``: pick a budget of the candidate frames (``select_frames``) and/or pre-label the
    kept frames that have no label with a model; ``selection.csv`` ranks the picked frames."""
    if split is not None and val_fraction is not None:
        raise BagError("--split and --val-fraction exclude each other (--val-fraction writes train and val)")
    if split is not None and (not split or "/" in split or split.startswith(".")):
        raise BagError(f"--split: {split!r} is not a folder name")
    if classes and label_classes:
        raise BagError("--classes (labels hold train ids) and --label-classes (its id_map maps them) exclude "
                       "each other")
    out_path = check_output(out, inputs=[bag, classes, label_classes], overwrite=overwrite, kind="dir", tool=TOOL)
    lut = None
    if label_classes:
        table, lut = read_label_classes(label_classes)
        source = f"{label_classes} (label values mapped by its id_map)"
    else:
        table = ClassTable.from_yaml(classes) if classes else ClassTable.cityscapes()
        source = str(classes) if classes else "the Cityscapes train ids"
    segmenter = chosen = None
    if selection is not None:
        segmenter, chosen = _select(bag, image_topic, every, rate_hz, selection, table,
                                    "--classes" if classes else "--label-classes" if label_classes else None,
                                    progress)
        if segmenter is not None and not (classes or label_classes):  # the drafts' table: the model's
            table, source = segmenter.classes, f"the checkpoint {selection.checkpoint}"
    keep = None if chosen is None else {c.stamp for c in chosen}
    drafts: list[tuple[str, np.ndarray]] = []  # kept frames waiting for the model (at most a batch)
    drafted: list[str] = []  # names with a draft in <staging>/drafts (a bag's own label wins at the end)
    prelabelled = 0
    min_gap_ns = int(1e9 / rate_hz) if rate_hz else 0
    kept: dict[int, tuple[str, tuple[int, int]]] = {}  # header stamp -> (file name, image (h, w))
    pending_labels: dict[int, np.ndarray] = {}
    labelled: list[str] = []
    seen = duplicates = 0
    last_kept: int | None = None

    def check_label(stamp: int, label: np.ndarray, image_shape: tuple[int, int]) -> None:
        where = f"{bag}: label topic {label_topic} at stamp {stamp_name(stamp)}"
        if label.shape != image_shape:
            raise BagError(f"{where}: the label is {label.shape[1]}x{label.shape[0]} but its image is "
                           f"{image_shape[1]}x{image_shape[0]}")
        bad = label[(label >= table.num_classes) & (label != table.ignore_index)]
        if bad.size:
            values = ", ".join(str(int(v)) for v in np.unique(bad)[:8])
            raise BagError(f"{where}: value(s) {values} are not train ids of {source} ({table.num_classes} "
                           f"classes: 0..{table.num_classes - 1}, {table.ignore_index} = ignore); pass the "
                           "class table of these labels with --classes")

    with BagReader(bag) as reader, atomic_write(out_path, overwrite=overwrite, tool=TOOL, what="--out") as staging:
        info = reader.check_topic(image_topic)
        if label_topic:
            reader.check_topic(label_topic, what="label topic")
        (staging / "images").mkdir(parents=True)
        (staging / "labels").mkdir()
        topics = [image_topic] + ([label_topic] if label_topic else [])
        bar = tqdm(total=info.count, unit="frame", file=sys.stderr,
                   disable=True if not progress else None, desc="sfnet-extract")  # None: no bar unless a terminal
        try:
            for m in reader.messages(topics):
                if m.stamp is None:
                    raise BagError(f"{bag}: {m.topic} messages have no header stamp")
                try:
                    if m.topic == image_topic:
                        bar.update(1)
                        index, seen = seen, seen + 1
                        if keep is not None:  # the candidates were filtered by --every / --rate already
                            if m.stamp not in keep:
                                continue
                        elif index % every or (last_kept is not None and m.stamp - last_kept < min_gap_ns):
                            continue
                        if m.stamp in kept:
                            duplicates += 1  # two frames with one stamp: keep the first
                            continue
                        name = stamp_name(m.stamp)
                        image = decode_image(m.msg, m.msgtype)
                        write_png(staging / "images" / f"{name}.png", image)
                        kept[m.stamp] = (name, image.shape[:2])
                        if segmenter is not None and selection is not None and selection.prelabel:
                            drafts.append((name, image))
                            if len(drafts) == 4:  # drafted as the frames come: memory stays one batch
                                draft(drafts, drafted, segmenter, staging)
                        last_kept = m.stamp
                        label = pending_labels.pop(m.stamp, None)
                    else:
                        label = decode_labels(m.msg, m.msgtype, m.topic)
                        if lut is not None:
                            label = lut[label]
                        if m.stamp not in kept:
                            pending_labels[m.stamp] = label  # image not seen yet (or skipped)
                            continue
                        name = kept[m.stamp][0]
                    if label is not None:
                        check_label(m.stamp, label, kept[m.stamp][1])
                        write_png(staging / "labels" / f"{name}.png", label)
                        labelled.append(name)
                except ImageConversionError as exc:
                    raise BagError(f"{bag}: {m.topic} message at {m.timestamp} ns: {exc}") from None
        finally:
            bar.close()
        if not kept:
            raise BagError(f"{bag}: no frame of {image_topic} was kept")
        if label_topic and not labelled:
            raise BagError(f"{bag}: no label of {label_topic} has the header stamp of a kept image of {image_topic} "
                           "(labels are paired by exact stamp)")
        if drafts:
            draft(drafts, drafted, segmenter, staging)
        done = set(labelled)
        for name in drafted:  # frames without a label in the bag get the model's as their draft
            draft_file = staging / "drafts" / f"{name}.png"
            if name in done:
                draft_file.unlink()
            else:
                os.replace(draft_file, staging / "labels" / f"{name}.png")
                labelled.append(name)
                prelabelled += 1
        if drafted:
            (staging / "drafts").rmdir()
        assignment = split_by_time([name for name, _ in kept.values()], val_fraction, split)
        for folder in ("images", "labels"):
            for split_name in {p for p in assignment.values() if p is not None}:
                (staging / folder / split_name).mkdir()  # labels/<split>/ too, empty, for the labelling tool
            for name, part in assignment.items():
                source_file = staging / folder / f"{name}.png"
                if part is not None and source_file.exists():
                    os.replace(source_file, staging / folder / part / f"{name}.png")
        (staging / "classes.yaml").write_text(class_template(table, source), encoding="utf-8")
        if chosen is not None and selection is not None and selection.method:
            files = {s: "/".join(("images", *filter(None, [assignment[name]]), f"{name}.png"))
                     for s, (name, _) in kept.items()}
            (staging / "selection.csv").write_text(
                selection_csv([c for c in chosen if c.stamp in kept], files, bag, image_topic, selection.method),
                encoding="utf-8")
    splits = sorted({p for p in assignment.values() if p is not None})
    counts = {p: sum(1 for v in assignment.values() if v == p) for p in splits}
    summary = {"out": str(out), "images": len(kept), "labels": len(labelled), "frames_in_bag": seen,
               "duplicate_stamps": duplicates, "splits": counts, "classes": str(Path(out) / "classes.yaml")}
    if selection is not None:
        summary["prelabelled"] = prelabelled
        summary["selection"] = None if chosen is None else {
            "method": selection.method, "budget": selection.budget, "selected": len(chosen),
            "file": str(Path(out) / "selection.csv")}
    return summary


def draft(frames: list[tuple[str, np.ndarray]], drafted: list[str], segmenter: Any, staging: Path) -> None:
    """The model's labels of ``frames`` (name, RGB) into ``staging/drafts``; empties ``frames``."""
    (staging / "drafts").mkdir(exist_ok=True)
    for (name, _), result in zip(frames, segmenter.segment([rgb for _, rgb in frames])):
        write_png(staging / "drafts" / f"{name}.png", result.labels)
        drafted.append(name)
    frames.clear()


@dataclass(frozen=True)
class Selection:
    """``--select`` / ``--budget`` / ``--prelabel`` and the model they use."""

    checkpoint: str | None = None
    method: str | None = None  # "uncertainty" | "stride" | None (keep every candidate)
    budget: int = 0
    min_gap_s: float = 1.0
    focus: tuple[str, ...] = ()
    prelabel: bool = False
    device: str = "auto"
    threads: int = 0


def _select(bag: str | os.PathLike, topic: str, every: int, rate_hz: float | None, selection: Selection,
            table: ClassTable, table_option: str | None, progress: bool) -> tuple[Any, Any]:
    """(the model or None, the chosen candidates or None): scores the candidates when asked."""
    segmenter = None
    if selection.checkpoint and (selection.prelabel or selection.method == "uncertainty"):
        from sfnet_core.inference import Segmenter  # lazy: torch
        from sfnet_core.threads import apply_threads

        count = apply_threads(selection.threads or None)
        segmenter = Segmenter.from_checkpoint(selection.checkpoint, device=selection.device, warmup=False,
                                              threads=count)
        if table_option and list(segmenter.classes.names) != list(table.names):
            raise BagError(f"{table_option}: its classes are not the checkpoint's ({', '.join(table.names[:4])}, ... "
                           f"vs {', '.join(segmenter.classes.names[:4])}, ...); drafts must use the labels' table")
    if selection.method is None:
        return segmenter, None
    stamps = candidate_stamps(bag, topic, every, rate_hz)
    if selection.method == "uncertainty" and segmenter is not None:
        focus = [segmenter.classes.index(name) for name in selection.focus]
        bar = tqdm(total=len(stamps), unit="frame", file=sys.stderr, desc="sfnet-extract: scoring",
                   disable=True if not progress else None)

        def scored(frames: int) -> None:
            bar.update(frames)

        try:
            candidates = score_frames(bag, topic, stamps, segmenter, focus, progress=scored)
        finally:
            bar.close()
    else:
        candidates = [Candidate(s, (s - stamps[0]) / 1e9, float("nan")) for s in stamps]
    return segmenter, choose(candidates, selection.budget, selection.method, selection.min_gap_s)


DESCRIPTION = """Dump a bag's image topic into the folder-dataset layout that sfnet-train reads
(images/, labels/, classes.yaml; see the layouts below).

  sfnet-extract --bag drive.mcap --image-topic /front/image_raw --out my_data --rate 2 --val-fraction 0.2

Layouts: default images/ and labels/ (recipe: train_split: null); --split NAME: images/NAME/;
--val-fraction F: images/train/ and images/val/ (recipe: train_split: train, val_split: val), the
last F of the kept frames in time order going to val.
--out is refused if it exists (unless --overwrite, and then only a folder sfnet-extract wrote and
nobody changed since: labelling work is never replaced) or if it is the bag or lies inside it."""


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("sfnet-extract", DESCRIPTION)
    parser.add_argument("--bag", required=True, help="rosbag2 directory, .mcap or .db3 file, or ROS 1 .bag")
    parser.add_argument("--image-topic", required=True, help="sensor_msgs/Image or CompressedImage topic")
    parser.add_argument("--out", required=True, help="dataset folder to create")
    pick = parser.add_mutually_exclusive_group()
    pick.add_argument("--every", type=positive_int, default=1, help="keep every N-th frame (1: all)")
    pick.add_argument("--rate", type=positive_float, default=None,
                      help="keep at most this many frames per second of header time (default: no limit)")
    layout = parser.add_mutually_exclusive_group()
    layout.add_argument("--split", default=None, help="write images/NAME/ and labels/NAME/ (default: no split folder)")
    layout.add_argument("--val-fraction", type=fraction, default=None,
                        help="write train/ and val/ splits; the last F of the frames in time order are val "
                             "(default: no split folder)")
    tables = parser.add_mutually_exclusive_group()
    tables.add_argument("--classes", help="class YAML to copy as classes.yaml; the labels hold its train ids "
                                          "(default: Cityscapes train ids)")
    tables.add_argument("--label-classes", metavar="YAML",
                        help="the labels' class YAML: its id_map maps the bag's label values (e.g. Cityscapes "
                             "labelIds) to the train ids written; classes.yaml is it without the id_map")
    parser.add_argument("--label-topic", help="also write mono8 train-id labels from this topic, matched by "
                                              "header stamp (default: none; labels/ is left for labelling)")
    choose_group = parser.add_argument_group("choosing what to label (docs/custom-data.md)")
    choose_group.add_argument("--checkpoint", help="the model for --select uncertainty and --prelabel (.pt or .onnx)")
    choose_group.add_argument("--select", choices=("uncertainty", "stride"), default=None,
                              help="keep --budget of the candidate frames: the most uncertain (1 - margin of the two "
                                   "most probable classes), or evenly spaced in time (default: every candidate)")
    choose_group.add_argument("--budget", type=positive_int, default=None, help="--select: frames to keep")
    choose_group.add_argument("--min-gap", type=positive_float, default=1.0, metavar="SECONDS",
                              help="--select uncertainty: never two picks closer than this in header time "
                                   "(neighbouring frames are near copies)")
    choose_group.add_argument("--focus-classes", default="",
                              help="--select uncertainty: score only the pixels predicted as these classes "
                                   "(comma-separated names, e.g. a rare class)")
    choose_group.add_argument("--prelabel", action="store_true",
                              help="write --checkpoint's labels as drafts for the kept frames the bag has no label "
                                   "for (ignored regions stay 255)")
    choose_group.add_argument("--device", type=device_spec, default="auto", help="auto, cpu, cuda or cuda:N")
    add_threads(choose_group)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_overwrite(parser, "a dataset folder previously written by sfnet-extract and unchanged since")
    return parser


def _selection(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Selection | None:
    """The --select / --prelabel options, checked before anything is read."""
    if args.budget is not None and not args.select:
        parser.error("--budget is the number of frames --select keeps: give --select uncertainty or stride")
    if args.select and args.budget is None:
        parser.error("--select needs --budget N (the frames to keep)")
    focus = tuple(c.strip() for c in args.focus_classes.split(",") if c.strip())
    if focus and args.select != "uncertainty":
        parser.error("--focus-classes narrows --select uncertainty")
    needs_model = args.prelabel or args.select == "uncertainty"
    if needs_model and not args.checkpoint:
        parser.error("--select uncertainty and --prelabel need the model: --checkpoint")
    if args.checkpoint and not needs_model:
        parser.error("--checkpoint is for --select uncertainty and --prelabel")
    if not (args.select or args.prelabel):
        return None
    return Selection(args.checkpoint, args.select, args.budget or 0, args.min_gap, focus, args.prelabel,
                     args.device, args.threads)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    selection = _selection(args, parser)

    def run() -> int:
        if selection is not None and selection.checkpoint:
            require_model_file(selection.checkpoint)
        summary = extract(args.bag, args.image_topic, args.out, args.every, args.rate, args.classes,
                          args.label_topic, progress=not args.no_progress, overwrite=args.overwrite,
                          split=args.split, val_fraction=args.val_fraction, label_classes=args.label_classes,
                          selection=selection)
        print(f"wrote {summary['images']} images and {summary['labels']} labels to {summary['out']}",
              file=sys.stderr)
        print(json.dumps(summary))
        return 0

    return run_command("sfnet-extract", run, (SFNetError, OSError), interrupted="interrupted; no output written")


if __name__ == "__main__":
    sys.exit(main())
