"""``sfnet-labels``: a dataset's labels to and from CVAT and Label Studio.

    sfnet-labels export my_data --format cvat --out my_data_cvat
    sfnet-labels import my_data_cvat --format cvat --into my_data --overwrite
    sfnet-labels merge to_label --into my_data --split train
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from sfnet_core.cli.common import ArgumentParser, add_overwrite, make_parser, run_command
from sfnet_core.data.exchange import cvat, label_studio
from sfnet_core.data.exchange.layout import frames, label_png, read_classes, read_label
from sfnet_core.data.exchange.merge import merge_labelled
from sfnet_core.errors import DataError, SFNetError
from sfnet_core.io_utils import OutputError, atomic_write, check_output

PROG = "sfnet-labels"
DESCRIPTION = """Move a dataset's labels (a folder as sfnet-extract writes it: images/, labels/ with
train-id PNGs, classes.yaml) to and from the labelling tools teams use:

  sfnet-labels export my_data --format cvat --out my_data_cvat
  sfnet-labels export my_data --format label-studio --out my_data_ls --url-prefix my_data/
  sfnet-labels import corrected_cvat --format cvat --into my_data --overwrite
  sfnet-labels merge to_label --into training_set --split train

cvat: CVAT's "Segmentation mask 1.1" (labelmap.txt, palette PNGs in SegmentationClass/, the
images in JPEGImages/): a folder to zip and import into a CVAT task, or what CVAT exports.
label-studio: tasks.json (each image with its labels as a prediction, brush labels with RLE
masks) and label_config.xml (the labelling interface); import reads Label Studio's JSON export.
An import checks every file (names, sizes, class names and colours) before it writes anything;
replacing existing label PNGs (e.g. the drafts of sfnet-extract --prelabel) needs --overwrite.
merge: every frame of a labelled dataset folder (images and labels) joins another one with the
same class table (--split: all into that split, --prefix: before every name); all or nothing,
existing names need --overwrite."""


def build_parser() -> ArgumentParser:
    p = make_parser(PROG, DESCRIPTION)
    p.add_argument("action", choices=("export", "import", "merge"),
                   help="export the dataset's labels, import corrected ones, or merge a labelled dataset into another")
    p.add_argument("source", help="export, merge: the dataset folder; import: the tool's folder (or tasks JSON file)")
    p.add_argument("--format", choices=("cvat", "label-studio"), help="export, import: the labelling tool's format")
    p.add_argument("--out", help="export: the new folder to write")
    p.add_argument("--into", help="import: the dataset folder whose labels/ receives the labels; merge: the dataset "
                                  "folder that receives the frames")
    p.add_argument("--split", help="merge: put every frame into this split folder (e.g. train) instead of the "
                                   "source's own")
    p.add_argument("--prefix", default="", help="merge: put this before every file name (e.g. drive2-: two drives "
                                                "may share header stamps, hence names)")
    p.add_argument("--url-prefix", default="",
                   help="label-studio export: prefix of the image paths in the tasks, relative to Label Studio's "
                        "local-files root (LOCAL_FILES_DOCUMENT_ROOT), e.g. my_data/")
    add_overwrite(p, "an existing --out folder (export), existing label PNGs (import) or frames of the same "
                     "name (merge)")
    return p


def export_labels(dataset: Path, fmt: str, out: Path, url_prefix: str, overwrite: bool) -> dict[str, Any]:
    table = read_classes(dataset)
    check_output(out, inputs=[dataset], overwrite=overwrite, kind="dir", tool=PROG)
    items = frames(dataset)
    if fmt == "cvat":
        cvat.labelmap_text(table)  # refuses a class table CVAT cannot tell apart, before any work
    labelled = 0
    with atomic_write(out, overwrite=overwrite, tool=PROG, what="--out") as tmp:
        tmp.mkdir()
        tasks = []
        for frame in items:
            label = read_label(frame.label, table, frame.size()) if frame.label.is_file() else None
            labelled += label is not None
            if fmt == "cvat" and label is not None:
                cvat.write_frame(tmp, frame, label, table)
            elif fmt == "label-studio":
                url = label_studio.LOCAL_FILES + url_prefix + frame.image.relative_to(dataset).as_posix()
                tasks.append(label_studio.task(frame, url, label, table))
        if fmt == "cvat":
            cvat.write_index(tmp, [f.key for f in items if f.label.is_file()], table)
        else:
            label_studio.write_tasks(tmp, tasks, table)
    return {"out": str(out), "format": fmt, "images": len(items), "labelled": labelled}


def read_import(source: Path, fmt: str, dataset: Path) -> dict[str, np.ndarray]:
    """Every label of ``source``, validated against ``dataset`` (nothing is written here)."""
    table = read_classes(dataset)
    sizes = {frame.key: frame.size() for frame in frames(dataset)}
    labels: dict[str, np.ndarray] = {}
    if fmt == "cvat":
        colors = cvat.read_labelmap(source, table)
        for key, path in cvat.mask_files(source).items():
            if key not in sizes:
                raise DataError(f"{path}: {key!r} is not an image of {dataset}")
            labels[key] = cvat.read_frame_label(path, colors, sizes[key], table)
    else:
        for item in label_studio.read_tasks(source):
            found = label_studio.label_from_task(item, table, sizes, str(source))
            if found is not None:
                labels[found[0]] = found[1]
    if not labels:
        raise DataError(f"{source}: holds no label of an image of {dataset}")
    return labels


def import_labels(source: Path, fmt: str, dataset: Path, overwrite: bool) -> dict[str, Any]:
    labels = read_import(source, fmt, dataset)
    targets = {key: dataset / "labels" / f"{key}.png" for key in labels}
    replaced = [key for key, path in targets.items() if path.exists()]
    if replaced and not overwrite:
        raise OutputError(f"--into: {len(replaced)} label PNG(s) exist in {dataset / 'labels'} (e.g. "
                          f"{replaced[0]}.png); pass --overwrite to replace them with the imported labels")
    for key, label in labels.items():
        with atomic_write(targets[key], what="--into") as tmp:
            tmp.write_bytes(label_png(label))
    return {"into": str(dataset), "format": fmt, "labels": len(labels), "replaced": len(replaced)}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.action == "export" and (not args.out or args.into):
        parser.error("export writes --out (a new folder); --into is for import and merge")
    if args.action in ("import", "merge") and (not args.into or args.out):
        parser.error(f"{args.action} writes into --into (the dataset folder); --out is for export")
    if (args.format is None) != (args.action == "merge"):
        parser.error("merge takes no --format" if args.action == "merge" else f"{args.action} needs --format")
    if (args.split is not None or args.prefix) and args.action != "merge":
        parser.error("--split and --prefix are for merge")

    def run() -> int:
        import json

        if args.action == "export":
            summary = export_labels(Path(args.source), args.format, Path(args.out), args.url_prefix, args.overwrite)
            print(f"{PROG}: exported {summary['labelled']} of {summary['images']} images' labels to {args.out}",
                  file=sys.stderr)
        elif args.action == "merge":
            summary = merge_labelled(Path(args.source), Path(args.into), args.split, args.overwrite,
                                     args.prefix)
            print(f"{PROG}: merged {summary['frames']} frames into {args.into} ({summary['replaced']} replaced)",
                  file=sys.stderr)
        else:
            source, dataset = Path(args.source), Path(args.into)
            if not source.exists():
                raise DataError(f"{source}: no such file or folder")
            summary = import_labels(source, args.format, dataset, args.overwrite)
            print(f"{PROG}: imported {summary['labels']} labels into {dataset / 'labels'} "
                  f"({summary['replaced']} replaced)", file=sys.stderr)
        print(json.dumps(summary))
        return 0

    return run_command(PROG, run, (SFNetError,))


if __name__ == "__main__":
    sys.exit(main())
