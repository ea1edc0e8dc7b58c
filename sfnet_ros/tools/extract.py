"""``sfnet-extract``: turn recorded bags into a folder dataset ready for labelling and ``sfnet-train``.

    sfnet-extract --bag drive.mcap --image-topic /front/image_raw --out my_data --rate 2 --val-fraction 0.2
    sfnet-extract --bag drives/ --bag-list more.txt --image-topic /front/image_raw --out to_label \\
        --checkpoint model.pt --select uncertainty --budget 200 --prelabel

writes PNG images named after their header stamps (``<sec>_<nanosec>.png``, so they sort in time),
label PNGs of the same names (from ``--label-topic``, or left to the labelling tool) and
``classes.yaml``, the class table the labels must use (train ids, no id_map).

``--bag`` takes what ``sfnet-fleet-eval``'s does (a bag, a folder of bags searched recursively,
a glob; repeatable) and ``--bag-list FILE`` (``sfnet_ros.tools.fleet.sources.resolve_bags``).
With several bags the frames of different bags may share header stamps, so each name starts
with its bag's tag: ``<tag>_<sec>_<nanosec>.png``, the tag being the shortest path suffix that
tells the bags apart, file-name safe (``day1/drive.mcap`` -> ``day1-drive``; ``bag_tags``); names
sort by bag, then time. Every bag must hold the image topic (and ``--label-topic``), each is read
on its own (``--every`` / ``--rate`` and the pairing of labels by stamp are per bag), and every
error names its bag. ``--select`` picks one budget from the candidates of all the bags together
(``select_frames``). With one bag nothing changes: no tag. Layouts:

* default: ``images/``, ``labels/`` (``data.train_split: null`` in a recipe reads this);
* ``--split NAME``: ``images/NAME/``, ``labels/NAME/``;
* ``--val-fraction F``: ``images/train/`` + ``images/val/`` (and ``labels/...``), what
  ``training/configs/custom_template.yaml`` reads (``train_split: train``, ``val_split: val``).
  The split is by time, deterministic: the kept frames in stamp order, the last
  ``round(F * N)`` (at least one) in ``val``. Neighbouring frames of a drive are near copies of
  each other; a random split would put copies of training frames into the validation set. With
  several bags the order is the names' (by bag tag, then time): ``val`` holds the last bags'
  frames, whole drives held out, and at most one bag, at the boundary, is split in two by time.

Label values must be train ids of the class table (or its ignore index) and labels must have
their image's size; anything else is an error, not a silently wrong dataset. The folder appears
only when complete (staged next to it, renamed in); ``--overwrite`` replaces only a folder that
sfnet-extract wrote and nobody changed since (a record of its files, with their SHA-256, is kept
in ``.sfnet-manifest.json``: ``sfnet_core.io_utils``), so labelling work is never overwritten.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
from collections.abc import Sequence
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
from sfnet_ros.tools.fleet.sources import BAG_FILE_SUFFIXES, display_name, resolve_bags
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


def bag_tags(bags: Sequence[str | os.PathLike]) -> list[str]:
    """The file-name prefix of each bag's frames when several bags are read: its ``display_name``
    (the shortest path suffix that tells the bags apart, ``day1/drive.mcap``) without the bag file
    suffix, every character but letters, digits, ``.`` and ``-`` made ``-`` (``day1-drive``), and no
    leading ``.``. Where two come out alike, the file suffixes are kept; where two are still alike,
    every tag gets ``-<its position in bags>`` (the text after the last ``-`` then tells them apart).
    A tag holds no ``_``, so ``<tag>_<sec>_<nanosec>`` names sort by bag, then by time."""
    paths = [Path(b) for b in bags]
    names = [display_name(p, paths) for p in paths]

    def safe(name: str) -> str:
        return re.sub(r"^\.", "-", re.sub(r"[^A-Za-z0-9.-]", "-", name))

    def bare(name: str) -> str:  # without the bag file's suffix
        suffix = next((x for x in BAG_FILE_SUFFIXES if name.endswith(x) and len(name) > len(x)), "")
        return name[: len(name) - len(suffix)]

    tags = [safe(bare(n)) for n in names]
    if len(set(tags)) < len(tags):
        tags = [safe(n) for n in names]
    if len(set(tags)) < len(tags):
        tags = [f"{tag}-{i + 1}" for i, tag in enumerate(tags)]
    return tags


def extract(
    bag: str | os.PathLike | Sequence[str | os.PathLike],
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

    ``bag``: one bag, or a list of bags (each a bag path as ``BagReader`` opens it: no folders of
    bags or globs here, ``sfnet_ros.tools.fleet.sources.resolve_bags`` expands those); with more
    than one, the file names start with the bag's tag (``bag_tags``).
    ``label_classes`` (instead of ``classes``): the labels' class table, whose ``id_map`` maps the
    bag's label values (e.g. Cityscapes labelIds) to the train ids written into the label PNGs.
    ``selection``: pick a budget of the candidate frames of all the bags (``select_frames``) and/or
    pre-label the kept frames that have no label with a model; ``selection.csv`` ranks the picked
    frames."""
    bags = [bag] if isinstance(bag, (str, os.PathLike)) else list(bag)
    if not bags:
        raise BagError("no bag: give --bag (a bag, a folder of bags or a glob) or --bag-list FILE")
    resolved: set[Path] = set()
    for one in bags:
        if Path(one).resolve() in resolved:
            raise BagError(f"{one}: the bag is given twice")
        resolved.add(Path(one).resolve())
    tags = bag_tags(bags) if len(bags) > 1 else [""]
    if split is not None and val_fraction is not None:
        raise BagError("--split and --val-fraction exclude each other (--val-fraction writes train and val)")
    if split is not None and (not split or "/" in split or split.startswith(".")):
        raise BagError(f"--split: {split!r} is not a folder name")
    if classes and label_classes:
        raise BagError("--classes (labels hold train ids) and --label-classes (its id_map maps them) exclude "
                       "each other")
    out_path = check_output(out, inputs=[*bags, classes, label_classes], overwrite=overwrite, kind="dir", tool=TOOL)
    lut = None
    if label_classes:
        table, lut = read_label_classes(label_classes)
        source = f"{label_classes} (label values mapped by its id_map)"
    else:
        table = ClassTable.from_yaml(classes) if classes else ClassTable.cityscapes()
        source = str(classes) if classes else "the Cityscapes train ids"
    total = 0  # the image topic's messages in all the bags; every bag checked before any is read through
    for one in bags:
        with BagReader(one) as reader:
            total += reader.check_topic(image_topic).count
            if label_topic:
                reader.check_topic(label_topic, what="label topic")
    segmenter = chosen = None
    if selection is not None:
        segmenter, chosen = _select(bags, image_topic, every, rate_hz, selection, table,
                                    "--classes" if classes else "--label-classes" if label_classes else None,
                                    progress)
        if segmenter is not None and not (classes or label_classes):  # the drafts' table: the model's
            table, source = segmenter.classes, f"the checkpoint {selection.checkpoint}"
    keep = None if chosen is None else {(c.bag, c.stamp) for c in chosen}
    with atomic_write(out_path, overwrite=overwrite, tool=TOOL, what="--out") as staging:
        written = _Frames(staging, table, source, lut, label_topic,
                          segmenter if selection is not None and selection.prelabel else None)
        bar = tqdm(total=total, unit="frame", file=sys.stderr,
                   disable=True if not progress else None, desc="sfnet-extract")  # None: no bar unless a terminal
        try:
            for n, bag_path in enumerate(bags):
                written.read_bag(n, bag_path, tags[n], image_topic, keep, every, rate_hz, bar)
        finally:
            bar.close()
        if not written.kept:
            where = str(bags[0]) if len(bags) == 1 else f"{len(bags)} bags"
            raise BagError(f"{where}: no frame of {image_topic} was kept")
        prelabelled = written.place_drafts()
        kept, labelled = written.kept, written.labelled
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
            files = {key: "/".join(("images", *filter(None, [assignment[name]]), f"{name}.png"))
                     for key, (name, _) in kept.items()}
            (staging / "selection.csv").write_text(
                selection_csv([c for c in chosen if (c.bag, c.stamp) in kept], files, bags, image_topic,
                              selection.method),
                encoding="utf-8")
    splits = sorted({p for p in assignment.values() if p is not None})
    counts = {p: sum(1 for v in assignment.values() if v == p) for p in splits}
    summary = {"out": str(out), "images": len(kept), "labels": len(labelled), "bags": len(bags),
               "frames_in_bag": written.seen, "duplicate_stamps": written.duplicates, "splits": counts,
               "classes": str(Path(out) / "classes.yaml")}
    if selection is not None:
        summary["prelabelled"] = prelabelled
        summary["selection"] = None if chosen is None else {
            "method": selection.method, "budget": selection.budget, "selected": len(chosen),
            "file": str(Path(out) / "selection.csv")}
    return summary


class _Frames:
    """The frames and labels written into the staging folder so far, over all the bags, and the
    drafts of the model (``segmenter``: --prelabel) for the kept frames, made a batch at a time."""

    def __init__(self, staging: Path, table: ClassTable, source: str, lut: np.ndarray | None,
                 label_topic: str | None, segmenter: Any) -> None:
        self.staging, self.table, self.source, self.lut = staging, table, source, lut
        self.label_topic, self.segmenter = label_topic, segmenter
        self.kept: dict[tuple[int, int], tuple[str, tuple[int, int]]] = {}  # (bag, stamp) -> (name, (h, w))
        self.labelled: list[str] = []
        self.drafts: list[tuple[str, np.ndarray]] = []  # kept frames waiting for the model (at most a batch)
        self.drafted: list[str] = []  # names with a draft in <staging>/drafts (a bag's own label wins at the end)
        self.seen = self.duplicates = 0
        (staging / "images").mkdir(parents=True)
        (staging / "labels").mkdir()

    def read_bag(self, n: int, bag: str | os.PathLike, tag: str, image_topic: str, keep: set[tuple[int, int]] | None,
                 every: int, rate_hz: float | None, bar: Any) -> None:
        """Bag number ``n``: its kept frames (``keep``, else ``--every`` / ``--rate``) named
        ``[<tag>_]<stamp>``, and their labels, paired by header stamp within the bag."""
        min_gap_ns = int(1e9 / rate_hz) if rate_hz else 0
        pending_labels: dict[int, np.ndarray] = {}  # labels whose image has not come (yet)
        last_kept: int | None = None
        index = kept_here = labelled_here = 0
        topics = [image_topic] + ([self.label_topic] if self.label_topic else [])
        with BagReader(bag) as reader:
            for m in reader.messages(topics):
                if m.stamp is None:
                    raise BagError(f"{bag}: {m.topic} messages have no header stamp")
                key = (n, m.stamp)
                try:
                    if m.topic == image_topic:
                        bar.update(1)
                        frame, index, self.seen = index, index + 1, self.seen + 1
                        if keep is not None:  # the candidates were filtered by --every / --rate already
                            if key not in keep:
                                continue
                        elif frame % every or (last_kept is not None and m.stamp - last_kept < min_gap_ns):
                            continue
                        if key in self.kept:
                            self.duplicates += 1  # two frames with one stamp: keep the first
                            continue
                        self._add_image(key, f"{tag}_{stamp_name(m.stamp)}" if tag else stamp_name(m.stamp),
                                        decode_image(m.msg, m.msgtype))
                        kept_here += 1
                        last_kept = m.stamp
                        label = pending_labels.pop(m.stamp, None)
                    else:
                        label = decode_labels(m.msg, m.msgtype, m.topic)
                        if self.lut is not None:
                            label = self.lut[label]
                        if key not in self.kept:
                            pending_labels[m.stamp] = label  # image not seen yet (or skipped)
                            continue
                    if label is not None:
                        self._add_label(bag, key, label)
                        labelled_here += 1
                except ImageConversionError as exc:
                    raise BagError(f"{bag}: {m.topic} message at {m.timestamp} ns: {exc}") from None
        if self.label_topic and kept_here and not labelled_here:
            raise BagError(f"{bag}: no label of {self.label_topic} has the header stamp of a kept image of "
                           f"{image_topic} (labels are paired by exact stamp)")

    def _add_image(self, key: tuple[int, int], name: str, image: np.ndarray) -> None:
        write_png(self.staging / "images" / f"{name}.png", image)
        self.kept[key] = (name, image.shape[:2])
        if self.segmenter is not None:
            self.drafts.append((name, image))
            if len(self.drafts) == 4:  # drafted as the frames come: memory stays one batch
                draft(self.drafts, self.drafted, self.segmenter, self.staging)

    def _add_label(self, bag: str | os.PathLike, key: tuple[int, int], label: np.ndarray) -> None:
        name, image_shape = self.kept[key]
        where = f"{bag}: label topic {self.label_topic} at stamp {stamp_name(key[1])}"
        if label.shape != image_shape:
            raise BagError(f"{where}: the label is {label.shape[1]}x{label.shape[0]} but its image is "
                           f"{image_shape[1]}x{image_shape[0]}")
        table = self.table
        bad = label[(label >= table.num_classes) & (label != table.ignore_index)]
        if bad.size:
            values = ", ".join(str(int(v)) for v in np.unique(bad)[:8])
            raise BagError(f"{where}: value(s) {values} are not train ids of {self.source} ({table.num_classes} "
                           f"classes: 0..{table.num_classes - 1}, {table.ignore_index} = ignore); pass the "
                           "class table of these labels with --classes")
        write_png(self.staging / "labels" / f"{name}.png", label)
        self.labelled.append(name)

    def place_drafts(self) -> int:
        """The model's drafts become the labels of the frames the bags have none for; returns how many."""
        if self.drafts:
            draft(self.drafts, self.drafted, self.segmenter, self.staging)
        done = set(self.labelled)
        placed = 0
        for name in self.drafted:
            draft_file = self.staging / "drafts" / f"{name}.png"
            if name in done:
                draft_file.unlink()
            else:
                os.replace(draft_file, self.staging / "labels" / f"{name}.png")
                self.labelled.append(name)
                placed += 1
        if self.drafted:
            (self.staging / "drafts").rmdir()
        return placed


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


def _select(bags: Sequence[str | os.PathLike], topic: str, every: int, rate_hz: float | None,
            selection: Selection, table: ClassTable, table_option: str | None, progress: bool) -> tuple[Any, Any]:
    """(the model or None, the chosen candidates or None): scores the candidates of all the bags
    (one model, loaded once) when asked, and chooses one budget from them together."""
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
    per_bag = [candidate_stamps(bag, topic, every, rate_hz) for bag in bags]
    candidates: list[Candidate] = []
    if selection.method == "uncertainty" and segmenter is not None:
        focus = [segmenter.classes.index(name) for name in selection.focus]
        bar = tqdm(total=sum(map(len, per_bag)), unit="frame", file=sys.stderr, desc="sfnet-extract: scoring",
                   disable=True if not progress else None)

        def scored(frames: int) -> None:
            bar.update(frames)

        try:
            for index, (bag, stamps) in enumerate(zip(bags, per_bag)):
                candidates += score_frames(bag, topic, stamps, segmenter, focus, progress=scored, bag_index=index)
        finally:
            bar.close()
    else:
        candidates = [Candidate(s, (s - stamps[0]) / 1e9, float("nan"), index)
                      for index, stamps in enumerate(per_bag) for s in stamps]
    return segmenter, choose(candidates, selection.budget, selection.method, selection.min_gap_s)


DESCRIPTION = """Dump the image topic of one or many bags into the folder-dataset layout that
sfnet-train reads (images/, labels/, classes.yaml; see the layouts below).

  sfnet-extract --bag drive.mcap --image-topic /front/image_raw --out my_data --rate 2 --val-fraction 0.2
  sfnet-extract --bag drives/ --image-topic /front/image_raw --out to_label --checkpoint model.pt \\
      --select uncertainty --budget 200 --prelabel

Files are named after the header stamp (<sec>_<nanosec>.png); with several bags after the bag and
the stamp (<bag tag>_<sec>_<nanosec>.png, the tag the shortest path suffix telling the bags apart,
e.g. day1-drive), so they sort by bag, then time. --select chooses one --budget from all the bags
together (--min-gap between frames of the same bag only).
Layouts: default images/ and labels/ (recipe: train_split: null); --split NAME: images/NAME/;
--val-fraction F: images/train/ and images/val/ (recipe: train_split: train, val_split: val), the
last F of the kept frames in time order going to val (with several bags in name order: the last
bags' frames, whole drives held out).
--out is refused if it exists (unless --overwrite, and then only a folder sfnet-extract wrote and
nobody changed since: labelling work is never replaced) or if it is a bag or lies inside one."""


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("sfnet-extract", DESCRIPTION)
    parser.add_argument("--bag", action="append", default=[], metavar="BAG",
                        help="a bag (.mcap, .db3, .bag, rosbag2 folder), a folder of bags, or a glob; repeatable")
    parser.add_argument("--bag-list", action="append", default=[], metavar="FILE",
                        help="a text file naming bags, folders or globs, one per line; repeatable")
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
                              help="keep --budget of the candidate frames of all the bags: the most uncertain (1 - "
                                   "margin of the two most probable classes), or evenly spaced in time (each bag "
                                   "in proportion to its candidates) (default: every candidate)")
    choose_group.add_argument("--budget", type=positive_int, default=None,
                              help="--select: frames to keep (in all, over all the bags)")
    choose_group.add_argument("--min-gap", type=positive_float, default=1.0, metavar="SECONDS",
                              help="--select uncertainty: never two picks of the same bag closer than this in "
                                   "header time (neighbouring frames are near copies)")
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


def bags_of(entries: Sequence[str], list_files: Sequence[str]) -> list[str | Path]:
    """The bags ``--bag`` and ``--bag-list`` name (``resolve_bags``: bags, folders of bags, globs,
    list files). A single ``--bag`` that is neither a glob nor a folder of bags is passed on as
    given, so that its reader says what is wrong with it (a missing bag, not a bag, ...)."""
    if not list_files and len(entries) == 1:
        path = Path(entries[0])
        if not glob.has_magic(entries[0]) and not (path.is_dir() and not (path / "metadata.yaml").is_file()):
            return [entries[0]]
    return list(resolve_bags(entries, list_files))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.bag and not args.bag_list:
        parser.error("give --bag (a bag, a folder of bags or a glob) or --bag-list FILE")
    selection = _selection(args, parser)

    def run() -> int:
        bags = bags_of(args.bag, args.bag_list)
        if selection is not None and selection.checkpoint:
            require_model_file(selection.checkpoint)
        summary = extract(bags[0] if len(bags) == 1 else bags, args.image_topic, args.out, args.every, args.rate,
                          args.classes, args.label_topic, progress=not args.no_progress, overwrite=args.overwrite,
                          split=args.split, val_fraction=args.val_fraction, label_classes=args.label_classes,
                          selection=selection)
        print(f"wrote {summary['images']} images and {summary['labels']} labels to {summary['out']}",
              file=sys.stderr)
        print(json.dumps(summary))
        return 0

    return run_command("sfnet-extract", run, (SFNetError, OSError), interrupted="interrupted; no output written")


if __name__ == "__main__":
    sys.exit(main())
