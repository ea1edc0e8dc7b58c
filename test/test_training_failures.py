"""sfnet-train when things go wrong (issue 16): non-finite numbers, diverging runs, what a failed run
leaves, stale staging files of killed saves, crops and batches that cannot fit, YAML syntax errors,
and progress lines of slow runs."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_engine import tiny_recipe

from sfnet_core.cli.train_command import main
from sfnet_core.errors import ConfigError
from sfnet_core.training.config import load_train_config
from sfnet_core.training.engine import train

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cli(*args: str) -> subprocess.CompletedProcess:
    """The installed sfnet-train as its own process (one thread)."""
    return subprocess.run([str(Path(sys.executable).parent / "sfnet-train"), *args], capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          check=False)


def _one_error_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sfnet-train: error: "), text
    return lines[0]


# ----------------------------------------------------------------------------- NaN / infinity in a recipe
@pytest.mark.parametrize("section, key, value, named", [
    ("optim", "lr", ".nan", "optim.lr"),
    ("optim", "momentum", "-.inf", "optim.momentum"),
    ("loss", "ohem_thresh", ".nan", "loss.ohem_thresh"),
    ("model", "mean", "[0.4, .inf, 0.4]", "model.mean[1]"),
    ("model", "options", "{fpn_dim: 64, width: .nan}", "model.options.width"),
    ("data", "scale_range", "[0.5, .inf]", "data.scale_range[1]"),
    ("data", "crop_size", "[.nan, 64]", "data.crop_size[0]"),
    ("runtime", "eval_window", "[32, .inf]", "runtime.eval_window[1]"),
    ("schedule", "iterations", ".inf", "schedule.iterations"),
])
def test_nan_and_infinity_are_refused_in_every_recipe_value(tmp_path: Path, section, key, value, named) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"{section}:\n  {key}: {value}\n")
    with pytest.raises(ConfigError) as info:
        load_train_config(recipe)
    assert str(info.value).startswith(f"{recipe}: {named}: must be a finite number"), info.value
    # the same value as a key=value override
    with pytest.raises(ConfigError) as info:
        load_train_config(tiny_recipe(tmp_path), [f"{section}.{key}={value}"])
    assert f": {named}: must be a finite number" in str(info.value) and "recipe.yaml" in str(info.value)


def test_nan_recipe_through_the_cli_and_the_library_creates_nothing(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path)
    recipe.write_text(recipe.read_text().replace("optim", "optim_unused") + "optim: {lr: .nan}\n")
    out = tmp_path / "new" / "run"
    proc = _cli("--config", str(recipe), "--out", str(out), "--no-progress")
    assert proc.returncode == 2
    assert _one_error_line(proc.stderr) == f"sfnet-train: error: {recipe}: optim.lr: must be a finite number, got nan"
    assert not (tmp_path / "new").exists()
    # words Python reads as non-finite floats are named as such too
    with pytest.raises(ConfigError, match=r"optim\.lr: must be a finite number, got 'inf'"):
        load_train_config(tiny_recipe(tmp_path), ["optim.lr=inf"])
    # a recipe built in Python never met the YAML loader: train() checks it before any work
    cfg = load_train_config(tiny_recipe(tmp_path))
    cfg.optim.lr = float("nan")  # __post_init__ ran before: nothing stops this but train()
    with pytest.raises(ConfigError, match=r"^recipe: optim\.lr: must be a finite number, got nan$"):
        train(cfg, out)
    assert not (tmp_path / "new").exists()


# ----------------------------------------------------------------------------- diverging runs
def test_a_diverging_run_stops_without_saving_non_finite_weights(tmp_path: Path, capsys) -> None:
    """lr 1e12: iteration 1's update leaves huge but finite weights (saved), iteration 2's loss is
    NaN: stop there, last.pt keeps iteration 1. lr 3e38 (float32 ends at 3.4e38: any gradient
    above 1.2 overflows): iteration 1's update overflows the weights: last.pt is never written,
    and the run folder it created is removed."""
    recipe = tiny_recipe(tmp_path, iterations=4, runtime={"checkpoint_interval": 1, "image_interval": 0})
    out = tmp_path / "run"
    assert main(["--config", str(recipe), "--out", str(out), "optim.lr=1.0e+12"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (
        "sfnet-train: error: iteration 2: the loss is nan (main loss nan, aux loss nan): training diverged; "
        "stopped before the update, last.pt keeps iteration 1; lower optim.lr or check the data")
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["train_state"]["iteration"] == 1
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values() if t.is_floating_point())
    # a failed run with a checkpoint keeps its folder, and train.log says why it ends there
    assert "ERROR stopped: iteration 2: the loss is nan" in (out / "train.log").read_text()

    deep = tmp_path / "new" / "deeper" / "run"
    assert main(["--config", str(recipe), "--out", str(deep), "optim.lr=3.0e+38"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("sfnet-train: error: iteration 1: ") and "hold NaN or infinity" in line, line
    assert "last.pt was not written, there is no last.pt" in line
    assert not (tmp_path / "new").exists()  # run folder and the parents it created: gone


# ----------------------------------------------------------------------------- what a failed run leaves
def _folder_data(root: Path, bad_second_label: bool) -> None:
    import cv2
    import numpy as np

    (root / "images" / "train").mkdir(parents=True, exist_ok=True)
    (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
    (root / "classes.yaml").write_text(yaml.safe_dump({"classes": [
        {"name": "a", "color": [1, 2, 3]}, {"name": "b", "color": [4, 5, 6]}]}))
    for i in range(2):
        image = np.full((64, 128, 3), 40 * i, np.uint8)
        label = np.zeros((64, 128), np.uint8)
        label[:, 64:] = 7 if (i == 1 and bad_second_label) else 1
        cv2.imwrite(str(root / "images" / "train" / f"f{i}.png"), image)
        cv2.imwrite(str(root / "labels" / "train" / f"f{i}.png"), label)


def test_a_run_failing_before_its_first_checkpoint_leaves_nothing(tmp_path: Path) -> None:
    """A data error found during training (the second label holds a value that is no class)
    removes what the run created, so the corrected run into the same folder is accepted."""
    data = tmp_path / "data"
    _folder_data(data, bad_second_label=True)
    recipe = tiny_recipe(tmp_path, iterations=2, batch_size=2,
                         data={"kind": "folder", "root": str(data), "train_split": "train", "val_split": None},
                         runtime={"checkpoint_interval": 100, "image_interval": 0})
    out = tmp_path / "runs" / "mine"
    proc = _cli("--config", str(recipe), "--out", str(out), "--no-progress")
    assert proc.returncode == 2
    assert "labels/train/f1.png: label value(s) [7]" in proc.stderr.strip().splitlines()[-1], proc.stderr
    assert not (tmp_path / "runs").exists(), sorted(map(str, (tmp_path / "runs").rglob("*")))
    # an existing folder of the user's stays, emptied of what the run put in it
    out.mkdir(parents=True)
    assert main(["--config", str(recipe), "--out", str(out), "--no-progress"]) == 2
    assert out.is_dir() and not any(out.iterdir())
    _folder_data(data, bad_second_label=False)
    assert main(["--config", str(recipe), "--out", str(out), "--no-progress"]) == 0
    assert (out / "last.pt").is_file() and (out / "best.pt").is_file()


# ----------------------------------------------------------------------------- stale staging files
def test_resume_removes_stale_staging_files_of_its_checkpoints_only(tmp_path: Path) -> None:
    from sfnet_core.io_utils import staging_path
    from sfnet_core.training.run_folder import STAGING_NAME

    # the pattern is the one atomic_write really uses
    assert all(STAGING_NAME.match(staging_path(tmp_path / n).name) for n in ("last.pt", "best.pt", "config.yaml"))
    recipe = tiny_recipe(tmp_path, iterations=2, runtime={"image_interval": 0})
    out = tmp_path / "run"
    assert main(["--config", str(recipe), "--out", str(out), "--max-iters", "1", "--no-progress"]) == 0
    stale = [out / ".last.pt.0a1b2c3d.tmp", out / ".best.pt.ffffffff.tmp"]
    for path in stale:
        path.write_bytes(b"\0" * 4096)  # what a SIGKILL in the middle of torch.save leaves
    kept = [out / ".last.pt.0a1b2c3d.tmp.keep", out / ".last.pt.0A1B2C3D.tmp", out / "last.pt.0a1b2c3d.tmp",
            out / ".notes.0a1b2c3d.tmp", out / ".last.pt.0a1b2c3.tmp", out / "sub" / ".last.pt.0a1b2c3d.tmp"]
    for path in kept:
        path.parent.mkdir(exist_ok=True)
        path.write_text("the user's")
    (out / ".best.pt.12345678.tmp").mkdir()  # not a file: not ours either
    assert main(["--config", str(recipe), "--out", str(out), "--resume", "--no-progress"]) == 0
    assert not any(p.exists() for p in stale)
    assert all(p.read_text() == "the user's" for p in kept) and (out / ".best.pt.12345678.tmp").is_dir()
    log = (out / "train.log").read_text()
    for path in stale:
        assert f"removed {path} (0.0 MB): the staging file of a save that was killed half way" in log
    assert torch.load(out / "last.pt", weights_only=True)["train_state"]["iteration"] == 2

    # a folder holding nothing but such files is no run: a new run is accepted and clears them
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / ".last.pt.89abcdef.tmp").write_bytes(b"\0")
    assert main(["--config", str(recipe), "--out", str(fresh), "--max-iters", "1", "--no-progress"]) == 0
    assert not (fresh / ".last.pt.89abcdef.tmp").exists() and (fresh / "last.pt").is_file()


# ----------------------------------------------------------------------------- crops and batches that cannot fit
def test_a_crop_far_larger_than_the_images_is_refused_before_anything_is_written(tmp_path: Path, capsys) -> None:
    recipe = tiny_recipe(tmp_path, iterations=1)  # 64x128 frames, scale up to 1.5
    out = tmp_path / "run"
    assert main(["--config", str(recipe), "--out", str(out), "data.crop_size=[512,512]"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line == ("sfnet-train: error: data.crop_size: 512x512 (h x w) is far larger than the training images: "
                    "the largest is 64x128, 96x192 at the largest scale 1.5 of data.scale_range, so at least "
                    "93.0% of every crop would be padding; use a crop of at most 96x192, "
                    "e.g. data.crop_size=[96,192]")
    assert not out.exists()


def test_one_image_per_rank_is_refused_before_anything_is_written(tmp_path: Path, capsys) -> None:
    # BatchNorm after the pyramid pooling's 1x1 bin cannot train on one value per channel
    recipe = tiny_recipe(tmp_path, iterations=1)
    out = tmp_path / "run"
    assert main(["--config", str(recipe), "--out", str(out), "schedule.batch_size=1"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line == ("sfnet-train: error: schedule.batch_size: 1 over 1 rank(s) is 1 image per rank; BatchNorm "
                    "needs at least 2 per rank (raise schedule.batch_size, or use SyncBatchNorm on several GPUs)")
    assert not out.exists()


def test_crop_limits_and_the_memory_estimate() -> None:
    from sfnet_core.data.config import DataConfig
    from sfnet_core.data.datasets import SyntheticDataset
    from sfnet_core.data.factory import MIN_IMAGE_FRACTION, check_crop_fits, largest_image_size
    from sfnet_core.training.engine import _mem_available, check_step_memory, step_memory_lower_bound

    assert largest_image_size(SyntheticDataset(2, 64, 128)) == (64, 128)
    cfg = DataConfig(kind="synthetic", crop_size=(64, 128), scale_range=(0.75, 1.5))
    assert check_crop_fits(cfg, (64, 128)) is None
    # padded crops are the released recipe's semantics (1024x1024 crops of 1024x2048 frames at 0.5)
    released = DataConfig(kind="synthetic", crop_size=(1024, 1024), scale_range=(0.5, 2.0))
    assert check_crop_fits(released, (1024, 2048)) is None
    # every crop padded, but mostly image: allowed with a note
    note = check_crop_fits(DataConfig(kind="synthetic", crop_size=(128, 192), scale_range=(0.75, 1.5)), (64, 128))
    assert note is not None and "every crop is padded with the ignore label" in note
    # the limit: the largest scaled image must cover MIN_IMAGE_FRACTION of the crop
    assert MIN_IMAGE_FRACTION == 0.25
    assert check_crop_fits(DataConfig(kind="synthetic", crop_size=(192, 384), scale_range=(1.0, 1.0)), (96, 192))
    with pytest.raises(ConfigError, match=r"at least 75\.1% of every crop would be padding"):
        check_crop_fits(DataConfig(kind="synthetic", crop_size=(193, 384), scale_range=(1.0, 1.0)), (96, 192))

    # the reported case: 4096x4096 crops, 2 per rank, 4 heads, 19 classes: 21 GB of logits alone
    assert step_memory_lower_bound((4096, 4096), 2, 4, 19) == 2 * 4096 * 4096 * (12 + 8 + 4 * 19 * 8)
    with pytest.raises(ConfigError) as info:
        check_step_memory((4096, 4096), 2, 2, 4, 19, free=8 * 10**9, where="available (test)")
    assert str(info.value) == (
        "data.crop_size: 4096x4096 crops, 2 per rank (schedule.batch_size 2), need at least 21.1 GB for one "
        "training step (the full-resolution logits of 4 head(s) x 19 classes and their gradients alone), more "
        "than the 8.0 GB available (test); lower data.crop_size or schedule.batch_size")
    check_step_memory((64, 128), 2, 2, 4, 19, free=8 * 10**9, where="available (test)")
    available = _mem_available()
    assert available is None or available > 0


# ----------------------------------------------------------------------------- YAML syntax errors
def test_yaml_syntax_errors_are_one_line_with_line_and_column(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model:\n  name: sfnet_resnet18\noptim: {lr: 0.01,\n  momentum 0.9\n")
    proc = _cli("--config", str(recipe), "--out", str(tmp_path / "run"))
    assert proc.returncode == 2
    line = _one_error_line(proc.stderr)
    assert line.startswith(f"sfnet-train: error: {recipe}:5:1: invalid YAML: "), line
    assert "(while parsing a flow mapping started at line 3, column 8)" in line
    assert not (tmp_path / "run").exists()
    # a number written the way YAML 1.1 reads as text gets a hint
    with pytest.raises(ConfigError, match=r"optim\.lr: expected a number, got '1e-4' \(YAML reads this as text"):
        load_train_config(tiny_recipe(tmp_path), ["optim.lr=1e-4"])


# ----------------------------------------------------------------------------- progress of slow runs
def test_progress_is_logged_after_the_first_iteration_and_when_time_passes(tmp_path: Path, monkeypatch) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from sfnet_core.training import engine

    recipe = tiny_recipe(tmp_path, iterations=3, runtime={"log_interval": 100, "image_interval": 0})
    train(load_train_config(recipe), tmp_path / "a")
    log = (tmp_path / "a" / "train.log").read_text()
    assert "iter 1/3 " in log and "iter 2/3 " not in log and "iter 3/3 " in log
    monkeypatch.setattr(engine, "PROGRESS_SECONDS", 0.0)  # "a long time" has passed before every iteration
    train(load_train_config(recipe), tmp_path / "b")
    log = (tmp_path / "b" / "train.log").read_text()
    assert all(f"iter {i}/3 " in log for i in (1, 2, 3))
    # TensorBoard keeps the regular steps only
    events = EventAccumulator(str(tmp_path / "b" / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("train/lr")] == [3]
    assert math.isfinite(events.Scalars("train/loss")[0].value)

