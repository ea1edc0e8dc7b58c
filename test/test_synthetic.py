"""The synthetic driving-scene generator: determinism, label consistency, coverage, motion, files."""
from __future__ import annotations

import numpy as np
import pytest

from sfnet_core.data.classes import ClassTable
from sfnet_core.data.datasets import FolderDataset, SyntheticDataset
from sfnet_core.data.synthetic_scenes import train_ids
from sfnet_core.data.synthetic_scenes.arguments import MIN_SIZE, parse_size
from sfnet_core.data.synthetic_scenes.dataset_writer import write_folder_dataset
from sfnet_core.data.synthetic_scenes.render import frame_seed, render_scene, render_sequence
from sfnet_core.data.synthetic_scenes.train_ids import SYNTHETIC_CLASSES

H, W = 64, 128


def test_class_constants_are_cityscapes_train_ids():
    table = ClassTable.cityscapes()
    for name in SYNTHETIC_CLASSES:
        assert getattr(train_ids, {"traffic sign": "SIGN"}.get(name, name.upper())) == table.index(name)


def test_render_scene_shapes_dtypes_and_determinism():
    image, labels = render_scene(5, H, W)
    assert image.shape == (H, W, 3) and image.dtype == np.uint8
    assert labels.shape == (H, W) and labels.dtype == np.uint8
    again_image, again_labels = render_scene(5, H, W)
    assert np.array_equal(image, again_image) and np.array_equal(labels, again_labels)
    other_image, other_labels = render_scene(6, H, W)
    assert not np.array_equal(labels, other_labels)  # the seed changes the layout
    assert not np.array_equal(image, other_image)


def test_labels_only_use_claimed_classes_or_ignore():
    table = ClassTable.cityscapes()
    allowed = {table.index(n) for n in SYNTHETIC_CLASSES} | {255}
    for seed in range(4):
        _, labels = render_scene(seed, H, W)
        assert set(np.unique(labels).tolist()) <= allowed


def test_every_claimed_class_appears_over_a_few_frames():
    table = ClassTable.cityscapes()
    seen: set[int] = set()
    for seed in range(6):
        seen |= set(np.unique(render_scene(seed, 96, 192)[1]).tolist())
    missing = {table.index(n) for n in SYNTHETIC_CLASSES} - seen
    assert not missing, f"classes never drawn: {[table.names[i] for i in sorted(missing)]}"


def test_image_colour_follows_the_labels():
    """Pixels of one class share a colour (the learnable cue); different classes differ."""
    image, labels = render_scene(2, 128, 256)
    sky, road = train_ids.SKY, train_ids.ROAD
    means = {c: image[labels == c].reshape(-1, 3).mean(0) for c in (sky, road, train_ids.VEGETATION)
             if (labels == c).sum() > 200}
    assert sky in means and road in means
    # sky is bluer than road (B - R), and the road is grey (small channel spread)
    assert means[sky][2] - means[sky][0] > 20
    assert np.ptp(means[road]) < 30


def test_sequence_starts_at_render_scene_and_moves():
    frames = list(render_sequence(3, 6, H, W))
    assert len(frames) == 6
    first_image, first_labels = render_scene(3, H, W)
    assert np.array_equal(frames[0][0], first_image) and np.array_equal(frames[0][1], first_labels)
    # consecutive frames differ (ego motion), but much less than two unrelated scenes do
    step = np.mean(frames[0][1] != frames[1][1])
    unrelated = np.mean(frames[0][1] != render_scene(4, H, W)[1])
    assert 0 < step < unrelated
    # same seed, same drive
    again = list(render_sequence(3, 6, H, W))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(frames, again))


def test_bad_arguments():
    with pytest.raises(ValueError, match="seed"):
        render_scene(-1, H, W)
    with pytest.raises(ValueError, match="size"):
        render_scene(0, 4, W)


def test_one_size_limit_for_the_generator_and_the_commands():
    import argparse

    render_scene(0, MIN_SIZE, MIN_SIZE)  # the smallest size every command accepts renders
    assert parse_size(f"{MIN_SIZE}x{MIN_SIZE}") == (MIN_SIZE, MIN_SIZE)
    assert parse_size("64X128") == (64, 128)
    for bad in (f"{MIN_SIZE - 1}x64", "64by128", "64", "axb"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_size(bad)
    with pytest.raises(ValueError, match="size"):
        render_scene(0, MIN_SIZE - 1, W)
    with pytest.raises(ValueError, match="size"):
        SyntheticDataset(1, MIN_SIZE - 1, W)


def test_write_folder_dataset_round_trip(tmp_path):
    root = write_folder_dataset(tmp_path / "synth", 5, H, W, seed=7, splits={"train": 3, "val": 2})
    table = ClassTable.from_yaml(root / "classes.yaml")
    assert table.names == ClassTable.cityscapes().names and table.id_map is None
    train = FolderDataset(root, "train", table)
    val = FolderDataset(root, "val", table)
    assert len(train) == 3 and len(val) == 2
    on_the_fly = SyntheticDataset(5, H, W, seed=7)
    for i in range(3):
        image, labels = train[i]
        expected_image, expected_labels = on_the_fly[i]
        assert np.array_equal(image, expected_image) and np.array_equal(labels, expected_labels)
    assert np.array_equal(val[0][1], render_scene(frame_seed(7, 3), H, W)[1])
    # rewriting its own output is allowed; an unrelated folder is never replaced
    write_folder_dataset(root, 2, H, W, seed=1, splits={"train": 2})
    assert not (root / "images" / "val").exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        write_folder_dataset(foreign, 2, H, W)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="summing"):
        write_folder_dataset(tmp_path / "x", 3, H, W, splits={"train": 1})


def test_command_line(tmp_path, capsys):
    from sfnet_core.cli.synthetic_command import main

    args = ["--out", str(tmp_path / "cli"), "--frames", "3", "--size", "32x64", "--val", "1"]
    assert main(args) == 0
    assert "3 frames" in capsys.readouterr().out
    assert len(list((tmp_path / "cli" / "images" / "train").glob("*.png"))) == 2
    assert len(list((tmp_path / "cli" / "labels" / "val").glob("*.png"))) == 1
    assert main(args) == 2  # an existing output is refused ...
    assert "exists" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0  # ... unless --overwrite (and it is ours)
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path / "bad"), "--size", "64by128"])
    assert exc.value.code == 2
