"""The typed YAML config loader, class tables and atomic writes shared by every part."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from sfnet_core.data.classes import ClassTable
from sfnet_core.errors import ConfigError
from sfnet_core.io_utils import atomic_write
from sfnet_core.yaml_config import apply_overrides, from_dict, load_yaml, to_dict

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Optim:
    lr: float = 0.01
    momentum: float = 0.9

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")


@dataclasses.dataclass
class Recipe:
    name: str
    optim: Optim = dataclasses.field(default_factory=Optim)
    crop: tuple[int, int] = (512, 1024)
    device: str | None = None


def test_from_dict_nested_defaults_and_coercion():
    recipe = from_dict(Recipe, {"name": "r18", "optim": {"lr": 1}, "crop": [64, 128]})
    assert recipe.optim.lr == 1.0 and isinstance(recipe.optim.lr, float)
    assert recipe.optim.momentum == 0.9
    assert recipe.crop == (64, 128)
    assert to_dict(recipe) == {"name": "r18", "optim": {"lr": 1.0, "momentum": 0.9}, "crop": [64, 128], "device": None}


@pytest.mark.parametrize(
    "data, message",
    [
        ({"name": "x", "optim": {"lr": "abc"}}, "x.yaml: optim.lr: expected a number, got 'abc'"),
        ({"name": "x", "optimizer": {}}, "x.yaml: unknown key(s) 'optimizer'"),
        ({"optim": {}}, "x.yaml: missing required key(s) 'name'"),
        ({"name": "x", "crop": [1, 2, 3]}, "x.yaml: crop: expected 2 values, got 3"),
        ({"name": "x", "optim": {"lr": -1}}, "optim.lr must be > 0"),
        ({"name": 3}, "x.yaml: name: expected a string, got 3"),
    ],
)
def test_from_dict_errors_name_file_and_key(data, message):
    with pytest.raises(ConfigError) as info:
        from_dict(Recipe, data, source="x.yaml")
    assert message in str(info.value)
    assert str(info.value).startswith("x.yaml")


def test_load_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_yaml(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError) as info:
        load_yaml(bad)
    # one line, file:line:column (1-based) like a compiler's
    assert str(info.value) == (f"{bad}:2:1: invalid YAML: expected ',' or ']', but got '<stream end>' "
                               "(while parsing a flow sequence started at line 1, column 4)")
    bad.write_text("a: 1\n  b: 2\n")
    with pytest.raises(ConfigError, match=r"^.*bad\.yaml:2:4: invalid YAML: mapping values are not allowed here$"):
        load_yaml(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_yaml(listing)
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("a: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match=r"unsafe\.yaml:1:4: invalid YAML: could not determine a constructor") as info:
        load_yaml(unsafe)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("data, message", [
    ({"name": "x", "optim": {"lr": float("nan")}}, "x.yaml: optim.lr: must be a finite number, got nan"),
    ({"name": "x", "optim": {"momentum": float("-inf")}}, "x.yaml: optim.momentum: must be a finite number, got -inf"),
    ({"name": "x", "crop": [64, float("inf")]}, "x.yaml: crop[1]: must be a finite number, got inf"),
    ({"name": "x", "optim": {"lr": "NaN"}}, "x.yaml: optim.lr: must be a finite number, got 'NaN'"),
])
def test_from_dict_refuses_nan_and_infinity(data, message):
    with pytest.raises(ConfigError) as info:
        from_dict(Recipe, data, source="x.yaml")
    assert str(info.value) == message


def test_check_finite_walks_dataclasses_lists_and_mappings():
    from sfnet_core.yaml_config import check_finite

    check_finite(Recipe(name="x"), "recipe")
    with pytest.raises(ConfigError, match=r"^recipe: optim\.lr: must be a finite number, got nan$"):
        check_finite(Recipe(name="x", optim=Optim(lr=float("nan"))), "recipe")
    with pytest.raises(ConfigError, match=r"^s: a\.b\[2\]: must be a finite number, got inf$"):
        check_finite({"a": {"b": [1, 2.0, float("inf")]}}, "s")


def test_overrides():
    data = apply_overrides({"optim": {"lr": 0.01}}, ["optim.lr=0.1", "name=r18", "crop=[64, 64]"])
    assert data == {"optim": {"lr": 0.1}, "name": "r18", "crop": [64, 64]}
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["nonsense"])
    with pytest.raises(ConfigError) as info:
        apply_overrides({}, ["crop=[64, 64"])
    assert "\n" not in str(info.value) and "override 'crop=[64, 64': invalid value: expected ','" in str(info.value)


def test_cityscapes_table_matches_yaml_and_official_ids():
    official = ClassTable.cityscapes()
    shipped = ClassTable.from_yaml(REPO / "config/classes/cityscapes.yaml")
    assert shipped == official
    assert official.num_classes == 19
    assert official.names[0] == "road" and official.names[18] == "bicycle"
    lut = official.label_lut()
    assert lut[7] == 0 and lut[26] == 13 and lut[0] == 255 and lut[9] == 255  # road, car, unlabeled, parking
    palette = official.palette()
    assert palette.shape == (256, 3) and tuple(palette[13]) == (0, 0, 142) and tuple(palette[255]) == (0, 0, 0)
    assert ClassTable.from_dict(official.to_dict()) == official


def test_class_table_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown class name 'tree'"):
        ClassTable.cityscapes().index("tree")
    bad = tmp_path / "classes.yaml"
    bad.write_text("classes:\n  - {name: road, color: [1, 2]}\n")
    with pytest.raises(ConfigError, match=r"classes.yaml: classes\[0\]: color must be"):
        ClassTable.from_yaml(bad)
    bad.write_text("ignore_index: 0\nclasses:\n  - {name: road, color: [1, 2, 3]}\n")
    with pytest.raises(ConfigError, match="ignore_index 0"):
        ClassTable.from_yaml(bad)
    bad.write_text("classes:\n  - {name: a, color: [1, 2, 3]}\nid_map: {7: 5}\n")
    with pytest.raises(ConfigError, match="id_map 7 -> 5"):
        ClassTable.from_yaml(bad)


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("crash half way")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
    with atomic_write(target) as tmp:
        assert not tmp.exists()
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    bag_dir = tmp_path / "bag"
    with atomic_write(bag_dir) as tmp:
        tmp.mkdir()
        (tmp / "data.mcap").write_bytes(np.arange(4, dtype=np.uint8).tobytes())
    assert (bag_dir / "data.mcap").read_bytes() == bytes([0, 1, 2, 3])
