"""Every command-line tool over a table of bad inputs, as real subprocesses (the console scripts).

Each case must end with exit status 2 and exactly one line on stderr, ``<tool>: error: ...``,
naming the problem; no traceback; and the whole temporary tree (inputs and pre-existing outputs)
byte-for-byte as it was, with no file added (no partial output, no staging folder left).

The cases run concurrently (a few at a time) from one module fixture; each case is still its own
test so that a failure names it. A case whose answer needs no model, GPU or ROS graph (all but the
``heavy`` ones) runs with importing torch, ONNX and rclpy made to fail (``test_startup.GUARD``):
the refusal must come before those seconds of imports, and the table stays fast. Those cases run
in forks of one process per tool (``test_startup.FORK_SERVER``: the tool loaded once, a fresh fork
a case, its own stdout, stderr and exit status); the heavy ones as console scripts.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from node_harness import write_test_checkpoint
from test_startup import fork_server

BIN = Path(sys.executable).parent
H, W = 64, 128
TIMEOUT = 240.0
LONG_NAME = "n" * 256  # one byte more than a file name may have (NAME_MAX)
# a machine with a GPU still has no device 99: the "requested but not there" path either way
NO_CUDA = "cuda" if not Path("/dev/nvidia0").exists() else "cuda:99"

MODULES = {  # console script -> module, for a checkout whose scripts are not installed
    "sfnet-train": "sfnet_core.cli.train_command", "sfnet-eval": "sfnet_core.cli.evaluate_command",
    "sfnet-export": "sfnet_ros.tools.export_with_bags", "sfnet-import": "sfnet_core.cli.import_command",
    "sfnet-synthetic": "sfnet_core.cli.synthetic_command", "sfnet-bag-eval": "sfnet_ros.tools.bag_eval",
    "sfnet-bag-play": "sfnet_ros.tools.bag_play", "sfnet-bag-record": "sfnet_ros.tools.bag_record",
    "sfnet-live-eval": "sfnet_ros.tools.live_eval", "sfnet-extract": "sfnet_ros.tools.extract",
    "sfnet-demo": "sfnet_ros.tools.demo", "sfnet-status": "sfnet_ros.tools.status",
    "sfnet-synthetic-bag": "sfnet_ros.tools.synthetic_bag", "sfnet-fleet-eval": "sfnet_ros.tools.fleet_eval",
    "sfnet-fleet-merge": "sfnet_ros.tools.fleet_merge", "sfnet-labels": "sfnet_core.cli.labels_command",
}


@dataclass(frozen=True)
class Case:
    id: str
    tool: str
    args: tuple[str, ...]  # "{d}" = the shared temporary tree, "{long}" = a name too long
    expect: str            # must appear in the one stderr line
    heavy: bool = False    # the answer needs torch or rclpy (a model's contents, a GPU, ROS arguments)


def C(id: str, tool: str, args: str, expect: str, heavy: bool = False) -> Case:
    return Case(id, tool, tuple(args.split()), expect, heavy)


BAG = "--bag {d}/drive.mcap --image-topic /front/image_raw"
EVAL = "--config {d}/recipe.yaml --checkpoint {d}/model.pt"
CK = "--checkpoint {d}/model.pt"
FLEET = "--bag {d}/drive.mcap --camera /front/image_raw:/front/labels " + CK
CASES = [
    # sfnet-train
    C("train-out-unwritable", "sfnet-train", "--config {d}/recipe.yaml --out /proc/sfnet_run", "cannot write /proc"),
    C("train-out-file", "sfnet-train", "--config {d}/recipe.yaml --out {d}/a_file.txt", "is a file"),
    C("train-out-under-file", "sfnet-train", "--config {d}/recipe.yaml --out {d}/a_file.txt/run",
      "is a file, not a folder"),
    C("train-out-not-a-run", "sfnet-train", "--config {d}/recipe.yaml --out {d}/existing_dir", "already holds files"),
    C("train-max-iters-0", "sfnet-train", "--config {d}/recipe.yaml --out {d}/new_run --max-iters 0",
      "--max-iters: expected an integer >= 1"),
    C("train-device-gpu0", "sfnet-train", "--config {d}/recipe.yaml --out {d}/new_run runtime.device=gpu0",
      "got 'gpu0'"),
    C("train-recipe-bad-value", "sfnet-train", "--config {d}/recipe.yaml --out {d}/new_run loss.ohem_thresh=2",
      "ohem_thresh: must be in (0, 1]"),
    C("train-missing-recipe", "sfnet-train", "--config {d}/missing.yaml --out {d}/new_run", "missing.yaml"),
    # sfnet-eval
    C("eval-window-0", "sfnet-eval", EVAL + " --mode slide --window 0 0", "--window: needs two positive sizes"),
    C("eval-scales-negative", "sfnet-eval", EVAL + " --mode msf --scales -1", "--scales: every scale must be > 0"),
    C("eval-json-dir", "sfnet-eval", EVAL + " --json {d}/existing_dir", "--json: {d}/existing_dir exists (folder)"),
    C("eval-json-dir-overwrite", "sfnet-eval", EVAL + " --json {d}/existing_dir --overwrite", "is a folder"),
    C("eval-json-exists", "sfnet-eval", EVAL + " --json {d}/report.json", "--json: {d}/report.json exists"),
    C("eval-save-pred-file", "sfnet-eval", EVAL + " --save-pred {d}/a_file.txt", "--save-pred: {d}/a_file.txt exists"),
    C("eval-save-pred-not-ours", "sfnet-eval", EVAL + " --save-pred {d}/existing_dir --overwrite",
      "never replaced"),
    C("eval-json-into-gt", "sfnet-eval", "--pred-dir {d}/pred --gt-dir {d}/gt --json {d}/gt/report.json",
      "is inside the input"),
    C("eval-pred-without-gt", "sfnet-eval", "--pred-dir {d}/pred", "--pred-dir and --gt-dir go together"),
    C("eval-device-gpu0", "sfnet-eval", EVAL + " --device gpu0", "expected auto, cpu, cuda or cuda:N, got 'gpu0'"),
    C("eval-max-images-negative", "sfnet-eval", EVAL + " --max-images -1", "--max-images"),
    # sfnet-bag-eval
    C("bag-eval-strip-range-reversed", "sfnet-bag-eval", BAG + " " + CK + " --strips {d}/s --strip-range 2 1",
      "--strip-range: expected 0 <= FROM <= TO seconds, got 2 1"),
    C("bag-eval-strip-range-alone", "sfnet-bag-eval", BAG + " " + CK + " --strip-range 0 1",
      "--strip-range needs --strips DIR"),
    C("bag-eval-strips-existing-dir", "sfnet-bag-eval", BAG + " " + CK + " --strips {d}/existing_dir --overwrite",
      "existing_dir"),
    C("bag-eval-out-existing-dir", "sfnet-bag-eval", BAG + " " + CK + " --out {d}/existing_dir",
      "{d}/existing_dir exists (folder)"),
    C("bag-eval-out-dir-overwrite", "sfnet-bag-eval", BAG + " " + CK + " --out {d}/existing_dir --overwrite",
      "never replaced"),
    C("bag-eval-out-is-bag", "sfnet-bag-eval", BAG + " " + CK + " --out {d}/drive.mcap --overwrite", "is the input"),
    C("bag-eval-out-inside-bag", "sfnet-bag-eval",
      "--bag {d}/drive_dir --image-topic /front/image_raw " + CK + " --out {d}/drive_dir/seg.mcap",
      "is inside the input"),
    C("bag-eval-out-existing-file", "sfnet-bag-eval", BAG + " " + CK + " --out {d}/existing.mcap",
      "{d}/existing.mcap exists (file)"),
    C("bag-eval-out-proc", "sfnet-bag-eval", BAG + " " + CK + " --out /proc/x", "cannot write /proc/x"),
    C("bag-eval-no-cuda", "sfnet-bag-eval", BAG + " " + CK + f" --device {NO_CUDA}", f"--device: {NO_CUDA} requested",
      heavy=True),
    C("bag-eval-device-gpu0", "sfnet-bag-eval", BAG + " " + CK + " --device gpu0", "got 'gpu0'"),
    C("bag-eval-labels-outside-table", "sfnet-bag-eval",
      "--bag {d}/badlabels.mcap --image-topic /front/image_raw --label-topic /front/labels " + CK,
      "value(s) 40 are not train ids", heavy=True),
    C("bag-eval-checkpoint-other-classes", "sfnet-bag-eval",
      BAG + " --label-topic /front/labels --checkpoint {d}/model3.pt", "(3 classes: 0..2, 255 = ignore)", heavy=True),
    C("bag-eval-nothing-paired", "sfnet-bag-eval",
      "--bag {d}/offstamp.mcap --image-topic /front/image_raw --label-topic /front/labels " + CK,
      "no image/label pair: no label header stamp equals an image header stamp", heavy=True),
    C("bag-eval-label-size", "sfnet-bag-eval",
      "--bag {d}/wrongsize.mcap --image-topic /front/image_raw --label-topic /front/labels " + CK,
      "the label is 64x32 but its image is 128x64", heavy=True),
    C("bag-eval-missing-bag", "sfnet-bag-eval", "--bag {d}/none.mcap --image-topic /x " + CK, "no such bag"),
    C("bag-eval-missing-checkpoint", "sfnet-bag-eval", BAG + " --checkpoint {d}/missing.pt", "missing.pt"),
    C("bag-eval-batch-0", "sfnet-bag-eval", BAG + " " + CK + " --batch-size 0", "--batch-size: expected an integer"),
    # sfnet-bag-play
    C("status-get-nothing", "sfnet-status", "get", "get needs at least one parameter"),
    C("status-transition-with-items", "sfnet-status", "activate now", "activate takes no parameters: now"),
    C("status-unknown-command", "sfnet-status", "dance", "argument command: invalid choice: 'dance'"),
    C("status-set-without-value", "sfnet-status", "set checkpoint", "set 'checkpoint': expected NAME:=VALUE"),
    C("status-period-0", "sfnet-status", "--period 0", "--period: expected a number > 0"),
    C("synthetic-bag-frames-0", "sfnet-synthetic-bag", "--out {d}/new.mcap --frames 0",
      "--frames: expected an integer >= 1"),
    C("synthetic-bag-bad-size", "sfnet-synthetic-bag", "--out {d}/new.mcap --size 64", "--size"),
    C("synthetic-bag-existing", "sfnet-synthetic-bag", "--out {d}/existing.mcap", "exists"),
    C("synthetic-bag-bad-storage", "sfnet-synthetic-bag", "--out {d}/new.mcap --storage zip", "invalid choice"),
    C("extract-classes-and-label-classes", "sfnet-extract", "--bag {d}/drive.mcap --image-topic /front/image_raw "
      "--out {d}/x --classes {d}/classes.yaml --label-classes {d}/classes.yaml", "not allowed with argument"),
    C("bag-eval-label-classes-alone", "sfnet-bag-eval", BAG + " " + CK + " --label-classes {d}/classes.yaml",
      "--label-classes maps the labels of --label-topic"),
    C("extract-budget-without-select", "sfnet-extract", "--bag {d}/drive.mcap --image-topic /front/image_raw "
      "--out {d}/x --budget 3", "--budget is the number of frames --select keeps"),
    C("extract-select-without-budget", "sfnet-extract", "--bag {d}/drive.mcap --image-topic /front/image_raw "
      "--out {d}/x --select stride", "--select needs --budget N"),
    C("extract-prelabel-without-model", "sfnet-extract", "--bag {d}/drive.mcap --image-topic /front/image_raw "
      "--out {d}/x --prelabel", "need the model: --checkpoint"),
    C("extract-prelabel-missing-model", "sfnet-extract", "--bag {d}/drive.mcap --image-topic /front/image_raw "
      "--out {d}/x --prelabel --checkpoint {d}/missing.pt", "missing.pt"),
    # sfnet-labels (the importers' bad files: test_labels.py)
    C("labels-export-not-a-dataset", "sfnet-labels", "export {d}/existing_dir --format cvat --out {d}/x",
      "no classes.yaml"),
    C("labels-export-without-out", "sfnet-labels", "export {d}/existing_dir --format cvat",
      "export writes --out"),
    C("labels-import-without-into", "sfnet-labels", "import {d}/existing_dir --format cvat",
      "import writes into --into"),
    C("labels-import-missing", "sfnet-labels", "import {d}/none --format label-studio --into {d}/existing_dir",
      "{d}/none: no such file or folder"),
    C("labels-bad-format", "sfnet-labels", "export {d}/existing_dir --format coco --out {d}/x", "invalid choice"),
    C("labels-merge-not-a-dataset", "sfnet-labels", "merge {d}/existing_dir --into {d}/x", "no classes.yaml"),
    # sfnet-fleet-eval / sfnet-fleet-merge
    C("fleet-no-camera", "sfnet-fleet-eval", "--bag {d}/drive.mcap " + CK + " --out {d}/f", "no camera"),
    C("fleet-camera-not-a-topic", "sfnet-fleet-eval", "--bag {d}/drive.mcap --camera /front//image " + CK +
      " --out {d}/f", "'/front//image' is not a ROS topic name"),
    C("fleet-missing-bag", "sfnet-fleet-eval", FLEET.replace("drive.mcap", "none.mcap") + " --out {d}/f",
      "--bag: {d}/none.mcap: no such file or folder"),
    C("fleet-glob-matches-nothing", "sfnet-fleet-eval", FLEET.replace("drive.mcap", "*.nothing") + " --out {d}/f",
      "matches no bag"),
    C("fleet-folder-without-bags", "sfnet-fleet-eval", FLEET.replace("drive.mcap", "existing_dir") + " --out {d}/f",
      "holds no bag"),
    C("fleet-missing-list", "sfnet-fleet-eval", FLEET + " --bag-list {d}/none.txt --out {d}/f", "--bag-list"),
    C("fleet-camera-not-in-bag", "sfnet-fleet-eval", "--bag {d}/drive.mcap --cameras rear " + CK + " --out {d}/f",
      "'/rear/image_raw' not in the bag"),
    C("fleet-out-exists", "sfnet-fleet-eval", FLEET + " --out {d}/existing_dir", "exists (folder)"),
    C("fleet-out-not-ours", "sfnet-fleet-eval", FLEET + " --out {d}/existing_dir --overwrite", "never replaced"),
    C("fleet-out-inside-bag", "sfnet-fleet-eval", FLEET.replace("drive.mcap", "drive_dir") + " --out {d}/drive_dir/f",
      "is inside the input"),
    C("fleet-missing-checkpoint", "sfnet-fleet-eval", FLEET.replace("model.pt", "missing.pt") + " --out {d}/f",
      "missing.pt"),
    C("fleet-report-not-html", "sfnet-fleet-eval", FLEET + " --out {d}/f --report {d}/r.txt", "is an HTML page"),
    C("fleet-gate-without-baseline", "sfnet-fleet-eval", FLEET + " --out {d}/f --gate-classes car",
      "--gate-classes compares two models: give --baseline"),
    C("fleet-max-drop-range", "sfnet-fleet-eval", FLEET + " --out {d}/f --max-drop 200", "--max-drop"),
    C("fleet-ray-with-workers", "sfnet-fleet-eval", FLEET + " --out {d}/f --ray local --workers 2",
      "--workers is for this machine"),
    C("fleet-gate-unknown-class", "sfnet-fleet-eval", FLEET + " --baseline {d}/model.pt --out {d}/f "
      "--gate-classes unicorn", "--gate-classes: unicorn not among the model's classes", heavy=True),
    C("fleet-merge-no-results", "sfnet-fleet-merge", "{d}/existing_dir --out {d}/m", "holds no fleet result"),
    C("fleet-merge-bad-npz", "sfnet-fleet-merge", "{d}/released.pth --out {d}/m", "not a fleet output folder"),
    C("fleet-merge-out-exists", "sfnet-fleet-merge", "{d}/fleet_partials --out {d}/existing_dir", "exists (folder)"),
    C("fleet-merge-damaged", "sfnet-fleet-merge", "{d}/fleet_partials --out {d}/m", "not a readable fleet result"),
    C("bag-play-no-topics", "sfnet-bag-play", "--bag {d}/empty.mcap", "the bag has no topics", heavy=True),
    C("bag-play-missing-bag", "sfnet-bag-play", "--bag {d}/none.mcap", "no such bag", heavy=True),
    C("bag-play-rate-0", "sfnet-bag-play", "--bag {d}/drive.mcap --rate 0", "--rate: expected a number > 0"),
    C("bag-play-bad-remap", "sfnet-bag-play", "--bag {d}/drive.mcap --remap nonsense", "expected FROM:=TO"),
    C("bag-play-unknown-topic", "sfnet-bag-play", "--bag {d}/drive.mcap --topics /nope", "'/nope' not in the bag",
      heavy=True),
    C("bag-play-bad-ros-args", "sfnet-bag-play", "--bag {d}/drive.mcap --ros-args -r nonsense",
      "invalid ROS arguments '--ros-args -r nonsense': Couldn't parse remap rule", heavy=True),
    # sfnet-bag-record
    C("bag-record-bad-ros-args", "sfnet-bag-record", "--topics /a --out {d}/rec.mcap --ros-args -r nonsense",
      "invalid ROS arguments", heavy=True),
    C("bag-record-bad-topic", "sfnet-bag-record", "--topics /front/bad?topic --out {d}/rec.mcap",
      "'/front/bad?topic' is not a valid ROS topic name", heavy=True),
    C("bag-record-sqlite3-mcap-name", "sfnet-bag-record", "--topics /a --storage sqlite3 --out {d}/rec.mcap",
      "--storage sqlite3 writes a rosbag2 folder"),
    C("bag-record-out-exists", "sfnet-bag-record", "--topics /a --out {d}/existing.mcap",
      "{d}/existing.mcap exists (file)"),
    C("bag-record-out-dir-overwrite", "sfnet-bag-record", "--topics /a --out {d}/existing_dir --overwrite",
      "never replaced"),
    C("bag-record-bad-type", "sfnet-bag-record", "--topics /a --type /a:=nonsense --out {d}/rec.mcap",
      "expected TOPIC:=pkg/msg/Type"),
    C("bag-record-type-unknown", "sfnet-bag-record", "--topics /a --type /a:=no_pkg/msg/Nothing --out {d}/rec.mcap",
      "unknown to rosbags", heavy=True),
    C("bag-record-duration-0", "sfnet-bag-record", "--topics /a --duration 0 --out {d}/rec.mcap",
      "--duration: expected a number > 0"),
    # sfnet-live-eval (every check happens before anything is played: no node needed)
    C("live-eval-labels-outside-table", "sfnet-live-eval",
      "--bag {d}/badlabels.mcap --image-topic /front/image_raw --label-topic /front/labels",
      "value(s) 40 are not train ids"),
    C("live-eval-nothing-paired", "sfnet-live-eval",
      "--bag {d}/offstamp.mcap --image-topic /front/image_raw --label-topic /front/labels",
      "no label of /front/labels has the header stamp of an image"),
    C("live-eval-missing-bag", "sfnet-live-eval", "--bag {d}/none.mcap --image-topic /x", "no such bag"),
    C("live-eval-rate-0", "sfnet-live-eval", BAG + " --rate 0", "--rate: expected a number > 0"),
    C("live-eval-bad-ros-args", "sfnet-live-eval", BAG + " --ros-args -r nonsense", "invalid ROS arguments",
      heavy=True),
    # sfnet-extract
    C("extract-out-existing-dir", "sfnet-extract", BAG + " --out {d}/existing_dir", "{d}/existing_dir exists (folder)"),
    C("extract-out-dir-overwrite", "sfnet-extract", BAG + " --out {d}/existing_dir --overwrite", "never replaced"),
    C("extract-out-inside-bag", "sfnet-extract", "--bag {d}/drive_dir --image-topic /front/image_raw "
      "--out {d}/drive_dir/data", "is inside the input"),
    C("extract-labels-outside-table", "sfnet-extract", "--bag {d}/badlabels.mcap --image-topic /front/image_raw "
      "--label-topic /front/labels --out {d}/new_data", "value(s) 40 are not train ids"),
    C("extract-label-size", "sfnet-extract", "--bag {d}/wrongsize.mcap --image-topic /front/image_raw "
      "--label-topic /front/labels --out {d}/new_data", "the label is 64x32 but its image is 128x64"),
    C("extract-nothing-paired", "sfnet-extract", "--bag {d}/offstamp.mcap --image-topic /front/image_raw "
      "--label-topic /front/labels --out {d}/new_data", "no label of /front/labels has the header stamp"),
    C("extract-val-fraction-1.5", "sfnet-extract", BAG + " --out {d}/new_data --val-fraction 1.5",
      "--val-fraction: expected a number between 0 and 1"),
    C("extract-val-too-few", "sfnet-extract", BAG + " --out {d}/new_data --every 2 --val-fraction 0.5",
      "too few for a train and a val split"),
    C("extract-split-and-val", "sfnet-extract", BAG + " --out {d}/new_data --split a --val-fraction 0.5",
      "not allowed with argument"),
    C("extract-every-0", "sfnet-extract", BAG + " --out {d}/new_data --every 0", "--every: expected an integer >= 1"),
    C("extract-missing-classes", "sfnet-extract", BAG + " --out {d}/new_data --classes {d}/missing.yaml",
      "missing.yaml"),
    C("extract-no-bag", "sfnet-extract", "--image-topic /front/image_raw --out {d}/new_data",
      "give --bag (a bag, a folder of bags or a glob) or --bag-list FILE"),
    C("extract-bag-list-missing", "sfnet-extract", "--bag-list {d}/missing.txt --image-topic /front/image_raw "
      "--out {d}/new_data", "--bag-list {d}/missing.txt: cannot read it"),
    C("extract-bag-glob-no-match", "sfnet-extract", BAG + " --bag {d}/nothing*.mcap --out {d}/new_data",
      "the pattern '{d}/nothing*.mcap' matches no bag"),
    C("extract-second-bag-without-topic", "sfnet-extract", BAG + " --bag {d}/empty.mcap --out {d}/new_data",
      "{d}/empty.mcap: image topic '/front/image_raw' not in the bag"),
    # sfnet-synthetic
    C("synthetic-out-existing-dir", "sfnet-synthetic", "--out {d}/existing_dir", "{d}/existing_dir exists (folder)"),
    C("synthetic-out-dir-overwrite", "sfnet-synthetic", "--out {d}/existing_dir --overwrite", "never replaced"),
    C("synthetic-frames-0", "sfnet-synthetic", "--out {d}/new_synth --frames 0", "--frames: must be >= 1"),
    # sfnet-demo
    C("demo-out-file", "sfnet-demo", "--out {d}/a_file.txt", "--out: {d}/a_file.txt exists (file)"),
    C("demo-out-not-ours", "sfnet-demo", "--out {d}/existing_dir --overwrite", "never replaced"),
    C("demo-checkpoint-other-classes", "sfnet-demo", "--out {d}/new_demo --checkpoint {d}/model3.pt",
      "predicts 3 classes", heavy=True),
    C("demo-no-cuda", "sfnet-demo", f"--out {{d}}/new_demo --device {NO_CUDA}", f"--device: {NO_CUDA} requested",
      heavy=True),
    C("demo-device-gpu0", "sfnet-demo", "--out {d}/new_demo --device gpu0", "got 'gpu0'"),
    C("demo-missing-recipe", "sfnet-demo", "--out {d}/new_demo --config {d}/missing.yaml", "recipe not found"),
    # sfnet-export and sfnet-import (owned elsewhere; the rules every tool follows)
    C("export-onnx-exists", "sfnet-export", CK + " --onnx {d}/existing.onnx", "--onnx: {d}/existing.onnx exists"),
    C("export-onnx-is-input", "sfnet-export", CK + " --onnx {d}/model.pt --overwrite", "is the input"),
    C("export-missing-checkpoint", "sfnet-export", "--checkpoint {d}/missing.pt --onnx {d}/new.onnx", "missing.pt"),
    C("import-out-exists", "sfnet-import", "{d}/released.pth --out {d}/existing.pt", "{d}/existing.pt exists"),
    C("import-out-is-input", "sfnet-import", "{d}/released.pth --out {d}/released.pth --overwrite", "is the input"),
    C("import-missing-file", "sfnet-import", "{d}/missing.pth --out {d}/new.pt", "missing.pth"),
    # outputs keep what users wrote (issue 16): folders with files the tool did not write, special
    # files, names too long, symlink loops, same or nested pred/gt folders, corrupted model files
    C("synthetic-overwrite-notes", "sfnet-synthetic", "--out {d}/synth_notes --overwrite --frames 1 --size 16x32",
      "(notes.txt); they are never replaced"),
    C("synthetic-overwrite-edited-png", "sfnet-synthetic", "--out {d}/synth_edited --overwrite --frames 1 --size 16x32",
      "labels/train/synth_000000.png"),
    C("synthetic-overwrite-added-folder", "sfnet-synthetic",
      "--out {d}/synth_subdir --overwrite --frames 1 --size 16x32", "(mine/)"),
    C("synthetic-overwrite-other-tools-folder", "sfnet-synthetic", "--out {d}/pred_clean --overwrite",
      "sfnet-synthetic did not write"),
    C("synthetic-out-fifo", "sfnet-synthetic", "--out {d}/fifo --overwrite", "is a FIFO"),
    C("synthetic-out-fifo-no-overwrite", "sfnet-synthetic", "--out {d}/fifo", "is a FIFO"),
    C("synthetic-out-dev-null", "sfnet-synthetic", "--out /dev/null --overwrite", "is a character device"),
    C("synthetic-name-too-long", "sfnet-synthetic", "--out {d}/{long}", "file name too long"),
    C("synthetic-symlink-loop", "sfnet-synthetic", "--out {d}/loop1/data", "a symlink loop"),
    C("synthetic-out-is-symlink-loop", "sfnet-synthetic", "--out {d}/loop1 --overwrite", "a symlink loop"),
    C("eval-pred-equals-gt", "sfnet-eval", "--pred-dir {d}/gt --gt-dir {d}/gt", "are the same folder"),
    C("eval-pred-equals-gt-via-link", "sfnet-eval", "--pred-dir {d}/gt_link --gt-dir {d}/gt", "are the same folder"),
    C("eval-pred-inside-gt", "sfnet-eval", "--pred-dir {d}/nest/inner --gt-dir {d}/nest",
      "--pred-dir {d}/nest/inner lies inside --gt-dir {d}/nest"),
    C("eval-gt-inside-pred", "sfnet-eval", "--pred-dir {d}/nest --gt-dir {d}/nest/inner",
      "--gt-dir {d}/nest/inner lies inside --pred-dir {d}/nest"),
    C("eval-save-pred-notes", "sfnet-eval", EVAL + " --save-pred {d}/pred_notes --overwrite", "(notes.txt)"),
    C("eval-save-pred-edited-png", "sfnet-eval", EVAL + " --save-pred {d}/pred_edited --overwrite", "(f0.png)"),
    C("eval-save-pred-other-tools-folder", "sfnet-eval", EVAL + " --save-pred {d}/synth_clean --overwrite",
      "sfnet-eval --save-pred did not write"),
    C("eval-save-pred-fifo", "sfnet-eval", EVAL + " --save-pred {d}/fifo --overwrite", "is a FIFO"),
    C("eval-json-fifo", "sfnet-eval", "--pred-dir {d}/pred --gt-dir {d}/gt --json {d}/fifo --overwrite", "is a FIFO"),
    C("eval-json-dev-null", "sfnet-eval", "--pred-dir {d}/pred --gt-dir {d}/gt --json /dev/null --overwrite",
      "is a character device"),
    C("eval-json-name-too-long", "sfnet-eval", "--pred-dir {d}/pred --gt-dir {d}/gt --json {d}/{long}",
      "file name too long"),
    C("eval-json-symlink-loop", "sfnet-eval", "--pred-dir {d}/pred --gt-dir {d}/gt --json {d}/loop1 --overwrite",
      "a symlink loop"),
    C("eval-random-bytes-onnx", "sfnet-eval", "--config {d}/recipe.yaml --checkpoint {d}/random.onnx", "random.onnx"),
    C("eval-truncated-pt", "sfnet-eval", "--config {d}/recipe.yaml --checkpoint {d}/truncated.pt", "truncated.pt"),
    C("eval-tampered-pt", "sfnet-eval", "--config {d}/recipe.yaml --checkpoint {d}/tampered.pt", "tampered.pt",
      heavy=True),
    C("export-onnx-fifo", "sfnet-export", CK + " --onnx {d}/fifo --overwrite", "is a FIFO"),
    C("export-onnx-dev-null", "sfnet-export", CK + " --onnx /dev/null --overwrite", "is a character device"),
    C("export-onnx-name-too-long", "sfnet-export", CK + " --onnx {d}/{long}", "file name too long"),
    C("export-onnx-symlink-loop", "sfnet-export", CK + " --onnx {d}/loop1/m.onnx", "a symlink loop"),
    C("export-truncated-pt", "sfnet-export", "--checkpoint {d}/truncated.pt --onnx {d}/new.onnx", "truncated.pt"),
    C("export-random-bytes-pt", "sfnet-export", "--checkpoint {d}/random.pt --onnx {d}/new.onnx", "random.pt"),
    C("export-tampered-pt", "sfnet-export", "--checkpoint {d}/tampered.pt --onnx {d}/new.onnx", "tampered.pt",
      heavy=True),
    C("import-out-fifo", "sfnet-import", "{d}/released.pth --out {d}/fifo --overwrite", "is a FIFO"),
    C("import-out-dev-null", "sfnet-import", "{d}/released.pth --out /dev/null --overwrite", "is a character device"),
    C("import-out-name-too-long", "sfnet-import", "{d}/released.pth --out {d}/{long}", "file name too long"),
    C("import-out-symlink-loop", "sfnet-import", "{d}/released.pth --out {d}/loop1/x.pt", "a symlink loop"),
    C("import-random-bytes", "sfnet-import", "{d}/random.pt --out {d}/new.pt", "random.pt"),
    C("import-truncated", "sfnet-import", "{d}/truncated.pt --out {d}/new.pt", "truncated.pt"),
    C("bag-eval-random-bytes-onnx", "sfnet-bag-eval", BAG + " --checkpoint {d}/random.onnx", "random.onnx"),
    C("bag-eval-truncated-pt", "sfnet-bag-eval", BAG + " --checkpoint {d}/truncated.pt", "truncated.pt"),
    C("bag-eval-tampered-pt", "sfnet-bag-eval", BAG + " --checkpoint {d}/tampered.pt", "tampered.pt", heavy=True),
    C("bag-eval-out-fifo", "sfnet-bag-eval", BAG + " " + CK + " --out {d}/fifo --overwrite", "is a FIFO"),
    C("bag-eval-out-name-too-long", "sfnet-bag-eval", BAG + " " + CK + " --out {d}/{long}", "file name too long"),
    C("extract-overwrite-notes", "sfnet-extract", BAG + " --out {d}/extract_notes --overwrite", "(notes.txt)"),
    C("extract-out-fifo", "sfnet-extract", BAG + " --out {d}/fifo --overwrite", "is a FIFO"),
    C("extract-symlink-loop", "sfnet-extract", BAG + " --out {d}/loop1/data", "a symlink loop"),
    C("bag-record-out-fifo", "sfnet-bag-record", "--topics /a --out {d}/fifo --overwrite", "is a FIFO"),
    C("demo-out-fifo", "sfnet-demo", "--out {d}/fifo --overwrite", "is a FIFO"),
    C("train-out-symlink-loop", "sfnet-train", "--config {d}/recipe.yaml --out {d}/loop1/run", "a symlink loop"),
    C("train-out-name-too-long", "sfnet-train", "--config {d}/recipe.yaml --out {d}/{long}", "file name too long"),
    # malformed files, answered before torch (issue 17): YAML that does not parse, model files in
    # no torch.save / protobuf format
    C("train-bad-yaml", "sfnet-train", "--config {d}/bad.yaml --out {d}/new_run", "bad.yaml:2:1: invalid YAML"),
    C("train-bad-override", "sfnet-train", "--config {d}/recipe.yaml --out {d}/new_run schedule",
      "override 'schedule' is not of the form key=value"),
    C("eval-bad-yaml", "sfnet-eval", "--config {d}/bad.yaml --checkpoint {d}/model.pt", "bad.yaml:2:1: invalid YAML"),
    C("eval-empty-pt", "sfnet-eval", "--config {d}/recipe.yaml --checkpoint {d}/empty.pt", "empty.pt: not a readable"),
    C("eval-plain-pickle", "sfnet-eval", "--config {d}/recipe.yaml --checkpoint {d}/plain.pkl",
      "a plain python pickle"),
    C("import-plain-pickle", "sfnet-import", "{d}/plain.pkl --out {d}/new.pt", "a plain python pickle"),
    C("demo-bad-yaml", "sfnet-demo", "--out {d}/new_demo --config {d}/bad.yaml", "bad.yaml:2:1: invalid YAML"),
    C("demo-random-checkpoint", "sfnet-demo", "--out {d}/new_demo --checkpoint {d}/random.pt",
      "random.pt: not a readable checkpoint"),
    C("bag-eval-random-bytes-pt", "sfnet-bag-eval", BAG + " --checkpoint {d}/random.pt", "random.pt: not a readable"),
    C("extract-bad-classes-yaml", "sfnet-extract", BAG + " --out {d}/new_data --classes {d}/bad.yaml",
      "bad.yaml:2:1: invalid YAML"),
    C("live-eval-bad-classes-yaml", "sfnet-live-eval", BAG + " --classes {d}/bad.yaml", "bad.yaml:2:1: invalid YAML"),
]


def _label_bag(path: Path, labels: list[np.ndarray], stamp_offset: int = 0) -> None:
    """A bag of len(labels) rgb8 frames on /front/image_raw and mono8 ``labels`` on /front/labels."""
    from sfnet_ros.conversions import numpy_to_image
    from sfnet_ros.tools.bag_io import IMAGE, BagWriter, make_header, ros2_class

    cls = ros2_class(IMAGE)
    with BagWriter(path) as writer:
        for i, label in enumerate(labels):
            stamp = 1_000_000_000 + i * 100_000_000
            image = numpy_to_image(np.full((H, W, 3), 90, np.uint8), "rgb8", header=make_header(stamp), msg_cls=cls)
            writer.write("/front/image_raw", stamp, image)
            header = make_header(stamp + stamp_offset)
            writer.write("/front/labels", stamp, numpy_to_image(label, "mono8", header=header, msg_cls=cls))


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared inputs and pre-existing outputs every case runs against."""
    import torch

    from sfnet_core.checkpoint import save_checkpoint
    from sfnet_core.data.classes import ClassTable
    from sfnet_core.models import build_model
    from sfnet_ros.tools.bag_io import BagWriter
    from sfnet_ros.tools.synthetic_bag import write_synthetic_bag

    d = tmp_path_factory.mktemp("bad_input")
    write_test_checkpoint(d / "model.pt", model_name="sfnet_shufflenetv2")
    torch.manual_seed(0)
    three = ClassTable(names=("road", "car", "sky"), colors=((128, 64, 128), (0, 0, 142), (70, 130, 180)))
    save_checkpoint(d / "model3.pt", build_model("sfnet_shufflenetv2", 3), "sfnet_shufflenetv2", three)
    write_synthetic_bag(d / "drive.mcap", 2, H, W, seed=1)
    write_synthetic_bag(d / "drive_dir", 2, H, W, seed=1)
    labels = np.zeros((H, W), np.uint8)
    labels[:4] = 40
    _label_bag(d / "badlabels.mcap", [labels])
    _label_bag(d / "offstamp.mcap", [np.zeros((H, W), np.uint8)] * 2, stamp_offset=1)
    _label_bag(d / "wrongsize.mcap", [np.zeros((H // 2, W // 2), np.uint8)])
    with BagWriter(d / "empty.mcap"):
        pass
    (d / "fleet_partials").mkdir()
    (d / "fleet_partials" / "bag.npz").write_bytes(b"PK\x03\x04 a fleet result cut short")
    (d / "existing_dir").mkdir()
    (d / "existing_dir" / "keep.txt").write_text("81 files of somebody's data set")
    (d / "a_file.txt").write_text("not a folder")
    for name in ("existing.mcap", "existing.onnx", "existing.pt", "report.json", "released.pth"):
        (d / name).write_bytes(b"previous output " + name.encode())
    recipe = {"model": {"name": "sfnet_shufflenetv2", "aux": False},
              "data": {"kind": "synthetic", "crop_size": [H, W], "workers": 0,
                       "synthetic": {"train_frames": 2, "val_frames": 1, "height": H, "width": W}},
              "schedule": {"iterations": 1, "batch_size": 1}, "runtime": {"device": "cpu"}}
    (d / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    for folder in ("pred", "gt"):
        (d / folder).mkdir()
        import cv2

        cv2.imwrite(str(d / folder / "f0.png"), np.zeros((8, 8), np.uint8))
    _previous_outputs(d)
    return d


def _previous_outputs(d: Path) -> None:
    """Outputs of earlier runs that users added to or edited, special files, links, broken models."""
    import torch

    from sfnet_core.data.synthetic_scenes.dataset_writer import write_folder_dataset
    from sfnet_core.evaluation.scoring import PREDICTIONS_TOOL
    from sfnet_core.io_utils import atomic_write
    from sfnet_ros.tools.extract import extract

    for name in ("synth_notes", "synth_edited", "synth_subdir", "synth_clean"):
        write_folder_dataset(d / name, 1, 16, 32, splits={"train": 1})
    (d / "synth_notes" / "notes.txt").write_text("my notes")
    edited = d / "synth_edited" / "labels" / "train" / "synth_000000.png"
    edited.write_bytes(edited.read_bytes()[:-1] + bytes([edited.read_bytes()[-1] ^ 1]))  # a hand correction
    (d / "synth_subdir" / "mine").mkdir()
    for name in ("pred_notes", "pred_edited", "pred_clean"):
        with atomic_write(d / name, tool=PREDICTIONS_TOOL) as stage:
            stage.mkdir()
            (stage / "f0.png").write_bytes(b"prediction")
    (d / "pred_notes" / "notes.txt").write_text("my notes")
    (d / "pred_edited" / "f0.png").write_bytes(b"correction")
    extract(d / "drive.mcap", "/front/image_raw", d / "extract_notes", progress=False)
    (d / "extract_notes" / "notes.txt").write_text("labelling notes")
    os.mkfifo(d / "fifo")
    (d / "loop1").symlink_to(d / "loop2")
    (d / "loop2").symlink_to(d / "loop1")
    (d / "gt_link").symlink_to(d / "gt")
    (d / "nest" / "inner").mkdir(parents=True)
    cv2 = __import__("cv2")
    cv2.imwrite(str(d / "nest" / "inner" / "f0.png"), np.zeros((8, 8), np.uint8))
    model = (d / "model.pt").read_bytes()
    (d / "truncated.pt").write_bytes(model[: len(model) // 2])
    rng = np.random.default_rng(0)
    (d / "random.pt").write_bytes(rng.bytes(4096))
    (d / "random.onnx").write_bytes(rng.bytes(4096))
    (d / "empty.pt").write_bytes(b"")
    (d / "plain.pkl").write_bytes(pickle.dumps({"weights": [1.0]}, protocol=4))
    (d / "bad.yaml").write_text("model: [1,\n")
    payload = torch.load(d / "model.pt", weights_only=True)  # the weights changed after writing
    key = next(k for k, v in payload["state_dict"].items() if v.is_floating_point())
    payload["state_dict"][key] = payload["state_dict"][key] + 1
    torch.save(payload, d / "tampered.pt")


def _checksums(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file and folder (folders: their sorted entry names; links:
    their target; FIFOs and other special files: their type, never read)."""
    import stat

    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                found[rel + "@"] = hashlib.sha256(os.readlink(path).encode()).hexdigest()
            elif stat.S_ISDIR(mode):
                found[rel + "/"] = hashlib.sha256("\n".join(sorted(os.listdir(path))).encode()).hexdigest()
            elif stat.S_ISREG(mode):
                found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                found[rel + "|"] = str(stat.S_IFMT(mode))
    return found


def _command(tool: str) -> list[str]:
    script = BIN / tool
    return [str(script)] if script.exists() else [sys.executable, "-m", MODULES[tool]]


def _args(case: Case, d: Path) -> list[str]:
    return [a.replace("{d}", str(d)).replace("{long}", LONG_NAME) for a in case.args]


def _run(case: Case, d: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """A heavy case: the console script as a process of its own."""
    return subprocess.run(_command(case.tool) + _args(case, d), env=env, cwd=d, capture_output=True, text=True,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL)


def _run_light(tool: str, cases: list[Case], d: Path, env: dict[str, str],
               logs: Path) -> dict[str, subprocess.CompletedProcess]:
    """The light cases of ``tool``, each in a fork of one guarded process (test_startup.FORK_SERVER):
    an answer that needs no model, no GPU and no ROS graph comes before torch and rclpy are
    imported, and under the guard importing them fails."""
    done = {}
    with subprocess.Popen(fork_server(tool, MODULES[tool]), env=env, cwd=d, stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as server:
        assert server.stdin is not None and server.stdout is not None
        for case in cases:
            out, err = logs / f"{case.id}.out", logs / f"{case.id}.err"
            server.stdin.write(json.dumps({"args": _args(case, d), "cwd": str(d), "out": str(out),
                                           "err": str(err)}) + "\n")
            server.stdin.flush()
            answer = server.stdout.readline()
            assert answer, f"{tool}'s fork server ended: {server.stderr.read()[-3000:] if server.stderr else ''}"
            done[case.id] = subprocess.CompletedProcess(case.id, json.loads(answer)["code"], out.read_text(),
                                                        err.read_text())
        server.stdin.close()
    return done


@pytest.fixture(scope="module")
def results(tree: Path, ros_domain_module: dict[str, str],
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[subprocess.CompletedProcess, dict]]:
    """Run every case (a few at a time); return id -> (process, files changed in the tree)."""
    env = dict(ros_domain_module, OMP_NUM_THREADS="1", SFNET_CACHE=str(tree / "cache_that_must_not_appear"))
    before = _checksums(tree)
    logs = tmp_path_factory.mktemp("bad_input_logs")  # outside the tree, which must not change
    light: dict[str, list[Case]] = {}
    for case in CASES:
        if not case.heavy:
            light.setdefault(case.tool, []).append(case)
    with ThreadPoolExecutor(max_workers=3) as pool:
        heavy = {case.id: pool.submit(_run, case, tree, env) for case in CASES if case.heavy}
        servers = [pool.submit(_run_light, tool, cases, tree, env, logs) for tool, cases in light.items()]
        done = {key: future.result() for key, future in heavy.items()}
        for future in servers:
            done.update(future.result())
    after = _checksums(tree)
    changed = {k: "changed" for k in before if k in after and before[k] != after[k]}
    changed.update({k: "removed" for k in before if k not in after})
    changed.update({k: "added" for k in after if k not in before})
    return {key: (proc, changed) for key, proc in done.items()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_exit_2(case: Case, tree: Path, results: dict) -> None:
    proc, changed = results[case.id]
    lines = proc.stderr.strip().splitlines()
    shown = f"exit {proc.returncode}, stderr:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, shown
    assert proc.returncode == 2, shown
    assert len(lines) == 1, shown
    assert lines[0].startswith(f"{case.tool}: error: "), shown
    assert case.expect.replace("{d}", str(tree)) in lines[0], shown
    # nothing in the tree changed, and nothing appeared (no partial output, no staging folder)
    assert changed == {}, changed


def test_split_ros_args() -> None:
    """Only the --ros-args sections reach rclpy; NAME:=VALUE arguments of the tool stay the tool's."""
    from sfnet_ros.tools.ros_args import split_ros_args

    own = ["--topics", "/a", "--type", "/a:=std_msgs/msg/String"]
    assert split_ros_args(own) == (own, [])
    assert split_ros_args([*own, "--ros-args", "-r", "__ns:=/v", "--", "--out", "x", "--ros-args", "-p", "a:=1"]) \
        == ([*own, "--out", "x"], ["--ros-args", "-r", "__ns:=/v", "--ros-args", "-p", "a:=1"])


def test_an_empty_recipe_says_so(tree: Path, tmp_path: Path) -> None:
    """An empty recipe file is every default (the Cityscapes recipe): said on stderr, not silent."""
    recipe = tmp_path / "empty.yaml"
    recipe.write_text("")
    proc = subprocess.run(_command("sfnet-train") + ["--config", str(recipe), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == f"sfnet-train: warning: --config {recipe} is empty: training with every default " \
                       "(the Cityscapes recipe)", proc.stderr
    assert proc.returncode == 2 and lines[-1].startswith("sfnet-train: error: ") and "Traceback" not in proc.stderr


@pytest.mark.parametrize("tool", sorted(MODULES))
def test_help_from_make_parser_shows_every_default(tool: str) -> None:
    """One formatter for every tool (sfnet_core.cli.common): each default shown, no RST markup."""
    import argparse
    import importlib

    from sfnet_core.cli.common import ArgumentParser, HelpFormatter

    parser = importlib.import_module(MODULES[tool]).build_parser()
    assert isinstance(parser, ArgumentParser) and parser.formatter_class is HelpFormatter
    assert parser.prog == tool
    text = parser.format_help()
    assert "``" not in text and ":func:" not in text and ":class:" not in text
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._StoreTrueAction)):
            continue
        assert action.help, f"{tool} {action.option_strings or action.dest}: no help text"
        if action.default not in (None, False, argparse.SUPPRESS, []):
            shown = HelpFormatter(tool)._get_help_string(action)
            assert "(default:" in shown, f"{tool} {action.option_strings}: default {action.default!r} not shown"


def test_bag_record_help_names_both_storages() -> None:
    from sfnet_ros.tools.bag_record import build_parser

    text = " ".join(build_parser().format_help().split())
    assert "mcap" in text and "sqlite3" in text and "a name ending in .mcap is refused" in text


def test_every_tool_has_a_row() -> None:
    assert {c.tool for c in CASES} == set(MODULES)
    assert len({c.id for c in CASES}) == len(CASES)


def test_the_tree_helper_sees_changes(tmp_path: Path) -> None:
    """The checksum comparison the table relies on notices a changed byte, a new hidden folder."""
    (tmp_path / "a").write_bytes(b"1")
    first = _checksums(tmp_path)
    (tmp_path / "a").write_bytes(b"2")
    assert _checksums(tmp_path) != first
    (tmp_path / "a").write_bytes(b"1")
    (tmp_path / ".x.tmp").mkdir()
    assert set(_checksums(tmp_path)) - set(first) == {".x.tmp/"}
    shutil.rmtree(tmp_path / ".x.tmp")
    assert _checksums(tmp_path) == first
    assert os.listdir(tmp_path) == ["a"]
