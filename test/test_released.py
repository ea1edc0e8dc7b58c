"""The authors' released SFNet checkpoints: sfnet-import, the key mapping, parity with the released code.

No released file is needed: ``released_reference`` holds the released state-dict layouts
(key/shape tables) and an independent functional forward pass of the released networks, both
written from reading the released code. Random weights under the released names go through
``sfnet-import``; the project model built from the written checkpoint must give the released
forward's logits (relative max difference <= 1e-4).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import random
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from doc_commands import fenced_blocks
from released_reference import (
    ARCHS,
    DF2_DSN_TABLE,
    PROJECT_NAME,
    R18_TABLE,
    parameter_count,
    parse_table,
    random_released_weights,
    released_forward,
    released_table,
)

from sfnet_core.checkpoint import load_checkpoint, save_checkpoint
from sfnet_core.cli.import_command import main as import_main
from sfnet_core.data.classes import ClassTable
from sfnet_core.models import build_model
from sfnet_core.models.pretrained import read_weights_file
from sfnet_core.models.released import (
    ReleasedFormatError,
    detect_layout,
    export_released,
    import_released,
)

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def model_stats():
    """bench/model_stats.py as a module (registered so that its dataclasses resolve)."""
    if "model_stats" in sys.modules and hasattr(sys.modules["model_stats"], "RELEASED_PARAMS"):
        return sys.modules["model_stats"]
    spec = importlib.util.spec_from_file_location("model_stats", ROOT / "bench" / "model_stats.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["model_stats"] = module
    spec.loader.exec_module(module)
    return module


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return ((a - b).abs().max() / b.abs().max()).item()


def save_released(path: Path, state: dict[str, torch.Tensor], **extra) -> Path:
    """A file as the authors' train.py writes it (DDP ``module.`` prefixes, numpy mean_iu)."""
    optimizer = {"state": {0: {"momentum_buffer": torch.zeros(4)}},
                 "param_groups": [{"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "params": [0]}]}
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "optimizer": optimizer,
                "epoch": 179, "mean_iu": np.float64(0.7901), "command": "--arch network.sfnet_resnet.x",
                **extra}, path)
    return path


def run_import(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = import_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def meta_state(table: dict) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return {k: torch.empty(shape, dtype=torch.long if k.endswith("num_batches_tracked") else torch.float32)
                for k, shape in table.items()}


# ----------------------------------------------------------------------------- the tables

def test_tables_are_the_released_networks() -> None:
    """The literal R18 / DF2+dsn tables agree with the generator, whose parameter counts are the
    released networks' (DF1 / DF2: measured on the released code in issue #10)."""
    assert dict(parse_table(R18_TABLE)) == dict(released_table("r18"))
    assert dict(parse_table(DF2_DSN_TABLE)) == dict(released_table("df2", dsn=True))
    counts = {arch: parameter_count(released_table(arch)) for arch in ARCHS}
    assert counts == {"r18": 12_869_715, "r50": 31_325_139, "r101": 50_317_267,
                      "df1": 8_422_387, "df2": 17_876_467}
    assert {PROJECT_NAME[a]: n for a, n in counts.items()} == model_stats().RELEASED_PARAMS


@pytest.mark.parametrize("table,variant,dsn", [(R18_TABLE, "sfnet_resnet18", False),
                                               (DF2_DSN_TABLE, "sfnet_df2", True)])
def test_import_consumes_the_table_exactly(table: str, variant: str, dsn: bool) -> None:
    shapes = parse_table(table)
    result = import_released(meta_state(shapes), "table")
    assert (result.layout.variant, result.layout.dsn, result.layout.num_classes) == (variant, dsn, 19)
    with torch.device("meta"):
        ours = build_model(variant, 19, aux=dsn).state_dict()
    assert list(result.state_dict) == list(ours)
    assert all(tuple(result.state_dict[k].shape) == tuple(v.shape) for k, v in ours.items())
    biases = sorted(k for k in shapes if k.endswith(".0.bias") and k.startswith(("head.fpn_in.", "head.dsn.")))
    assert sorted(result.folded) == biases and biases
    assert not result.dropped and not result.filled
    # every released key has exactly one place: the way back gives the table's keys, no more
    back = export_released(result.state_dict, variant)
    assert {k: tuple(v.shape) for k, v in back.items()} == dict(shapes)


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("dsn", [False, True])
def test_detects_every_variant(arch: str, dsn: bool) -> None:
    table = released_table(arch, num_classes=7, dsn=dsn)
    state = {f"module.{k}": v for k, v in meta_state(table).items()}
    result = import_released(state, "x")  # module. prefixes as saved from DDP
    layout = result.layout
    assert (layout.variant, layout.num_classes, layout.dsn) == (PROJECT_NAME[arch], 7, dsn)
    assert layout.fpn_dim == ARCHS[arch][3]
    assert detect_layout(dict(meta_state(table))) == layout
    with pytest.raises(ReleasedFormatError, match="not sfnet_resnet34"):
        import_released(state, "x", variant="sfnet_resnet34")


def test_criterion_buffers_are_dropped_and_named() -> None:
    state = meta_state(released_table("df1"))
    with torch.device("meta"):
        state["criterion.nll_loss.weight"] = torch.empty(19)
    result = import_released(state, "x")
    assert result.dropped == ["criterion.nll_loss.weight"]


# ----------------------------------------------------------------------------- bias folding

def test_bias_folding_is_exact() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 16, 1, bias=True)
    bn = torch.nn.BatchNorm2d(16)
    with torch.no_grad():
        conv.bias.normal_(0, 3.0)
        bn.running_mean.normal_(0, 3.0)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
    folded_conv = torch.nn.Conv2d(8, 16, 1, bias=False)
    folded_bn = torch.nn.BatchNorm2d(16)
    folded_conv.weight.data.copy_(conv.weight)
    folded_bn.load_state_dict(bn.state_dict())
    folded_bn.running_mean.copy_((bn.running_mean.double() - conv.bias.double()).float())
    x = torch.randn(4, 8, 5, 7)
    with torch.no_grad():
        released = bn.eval()(conv(x))
        ours = folded_bn.eval()(folded_conv(x))
        assert rel_diff(ours, released) < 1e-6
        # training mode: the batch mean absorbs the bias, with or without folding
        torch.testing.assert_close(folded_bn.train()(folded_conv(x)), bn.train()(conv(x)), atol=1e-5, rtol=0)

    # what import_released stores: running_mean - bias, rounded once from float64
    w = random_released_weights(released_table("df1"), "df1", size=(64, 64))
    result = import_released(w, "x")
    for i in range(2):
        expected = (w[f"head.fpn_in.{i}.1.running_mean"].double() - w[f"head.fpn_in.{i}.0.bias"].double()).float()
        assert torch.equal(result.state_dict[f"decoder.lateral.{i}.1.running_mean"], expected)


# ----------------------------------------------------------------------------- parity with the released code

# (released network, dsn heads, input size, fam_align_corners); R50 once, for its Bottlenecks.
PARITY_CASES = [(arch, dsn, size, ac) for arch, dsn, size in (("r18", False, (96, 128)), ("r18", True, (96, 128)),
                                                                 ("df2", True, (96, 128)), ("df1", False, (128, 128)))
                for ac in (True, False)] + [("r50", False, (64, 96), True)]


@pytest.mark.parametrize("arch,dsn,size,align_corners", PARITY_CASES,
                         ids=[f"{a}{'_dsn' if d else ''}-ac_{str(ac).lower()}" for a, d, _, ac in PARITY_CASES])
def test_imported_checkpoint_gives_the_released_logits(tmp_path: Path, capsys, arch: str, dsn: bool,
                                                       size: tuple[int, int], align_corners: bool) -> None:
    weights = random_released_weights(released_table(arch, dsn=dsn), arch, seed=1, size=size)
    source = save_released(tmp_path / "released.pth", weights)
    out = tmp_path / "imported.pt"
    rc, stdout, err = run_import([source, "--out", out, "--fam-align-corners", str(align_corners).lower()], capsys)
    assert rc == 0, err
    assert f"-> {PROJECT_NAME[arch]}, 19 classes" in stdout and "mean_iu 0.7901" in stdout

    ckpt = load_checkpoint(out)
    assert ckpt.model_name == PROJECT_NAME[arch] and ckpt.model_options["fam_align_corners"] is align_corners
    assert ckpt.classes.num_classes == 19 and ckpt.mean == pytest.approx((0.485, 0.456, 0.406))
    model = ckpt.build_model(aux=dsn)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(7))
    ref, ref_dsn = released_forward(weights, arch, x, align_corners)
    with torch.no_grad():
        logits = model(x)
        assert rel_diff(logits, ref) <= TOLERANCE
        if dsn:  # the deep-supervision heads, in the released order (coarse to fine)
            _, sums, _ = model.decoder(model.backbone(x))
            heads = [head(s) for head, s in zip(model.aux_heads, sums)]
            assert len(heads) == len(ref_dsn) == len(ARCHS[arch][2]) - 1
            assert max(rel_diff(a, b) for a, b in zip(heads, ref_dsn)) <= TOLERANCE
    # the option matters: the other sampling is far from these logits
    other, _ = released_forward(weights, arch, x, not align_corners)
    assert rel_diff(other, ref) > 100 * TOLERANCE


def test_segmenter_runs_an_imported_checkpoint(tmp_path: Path, capsys) -> None:
    """Segmenter.from_checkpoint takes the import as it is: labels = argmax of the released logits."""
    from sfnet_core.inference import Segmenter

    weights = random_released_weights(released_table("df1"), "df1", seed=2, size=(96, 128))
    out = tmp_path / "df1.pt"
    rc, _, err = run_import([save_released(tmp_path / "df1.pth", weights), "--out", out,
                             "--fam-align-corners", "false"], capsys)
    assert rc == 0, err
    segmenter = Segmenter.from_checkpoint(out, device="cpu", precision="fp32", warmup=False, flows=True)
    image = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    result = segmenter.segment(image, return_flows=True)
    x = (torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255.0
         - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    ref, _ = released_forward(weights, "df1", x, align_corners=False)
    agreement = (result.labels == ref.argmax(1)[0].numpy()).mean()
    assert result.labels.shape == (96, 128) and agreement > 0.999
    assert len(result.flows) == 2


# ----------------------------------------------------------------------------- round trips

def test_round_trip_released_to_project_to_released() -> None:
    """Every released tensor comes back unchanged except the folded pairs (bias zero, BN mean
    shifted by it), and the released forward of the two state dicts is the same."""
    weights = random_released_weights(released_table("df2", dsn=True), "df2", seed=3, size=(64, 96))
    result = import_released(weights, "x")
    back = export_released(result.state_dict, "sfnet_df2", {"fam_align_corners": True})
    assert set(back) == set(weights)
    folded_means = {k[: -len("0.bias")] + "1.running_mean": k for k in result.folded}
    for key, value in weights.items():
        if key in result.folded:
            assert not back[key].any() and back[key].dtype == value.dtype
        elif key in folded_means:
            bias = weights[folded_means[key]]
            assert torch.equal(back[key], (value.double() - bias.double()).float())
        else:
            assert back[key].dtype == value.dtype and torch.equal(back[key], value), key
    x = torch.randn(1, 3, 64, 96)
    a, a_dsn = released_forward(weights, "df2", x)
    b, b_dsn = released_forward(back, "df2", x)
    assert rel_diff(b, a) < 1e-5 and all(rel_diff(q, p) < 1e-5 for p, q in zip(a_dsn, b_dsn))


@pytest.mark.parametrize("variant", ["sfnet_resnet18", "sfnet_df1"])
def test_round_trip_project_to_released_to_project(variant: str) -> None:
    model = build_model(variant, 11, aux=True)
    for m in model.modules():  # non-trivial statistics and counters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.num_batches_tracked.fill_(123)
    state = model.state_dict()
    result = import_released(export_released(state, variant), "x")
    assert list(result.state_dict) == list(state)
    for key, value in state.items():
        assert result.state_dict[key].dtype == value.dtype and torch.equal(result.state_dict[key], value), key


@pytest.mark.parametrize("variant,options,match", [
    ("sfnet_resnet18", {"fuse": "fam"}, "fuse='fam'"),
    ("sfnet_resnet18", {"stem": "torchvision"}, "stem='torchvision'"),
    ("sfnet_resnet50", {"fpn_dim": 128}, "fpn_dim=128"),
    ("sfnet_df2", {"ppm_relu": True}, "ppm_relu=True"),
    ("sfnet_shufflenetv2", {}, "not a variant of the released code"),
])
def test_export_refuses_what_the_released_code_cannot_express(variant: str, options: dict, match: str) -> None:
    with torch.device("meta"):
        state = build_model(variant, 19, **options).state_dict()
    with pytest.raises(ReleasedFormatError, match=re.escape(match)):
        export_released(state, variant, options)


# ----------------------------------------------------------------------------- reading files

def test_reads_numpy1_pickled_metrics(tmp_path: Path) -> None:
    """Files from 2020 pickle mean_iu as numpy.core.multiarray.scalar (numpy 1 name); both
    spellings are read with weights_only=True."""
    path = tmp_path / "old.pth"
    torch.save({"state_dict": {"a": torch.ones(2)}, "mean_iu": np.float64(0.25), "epoch": np.int64(7)}, path,
               _use_new_zipfile_serialization=False)
    raw = path.read_bytes()
    assert b"numpy._core.multiarray\nscalar" in raw  # protocol 2 GLOBAL: module\nname
    path.write_bytes(raw.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar"))
    data = read_weights_file(path)
    assert data["mean_iu"] == 0.25 and data["epoch"] == 7 and torch.equal(data["state_dict"]["a"], torch.ones(2))


@pytest.fixture(scope="module")
def released_r18(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A released-format SFNet-R18 file (random weights, no calibration)."""
    gen = torch.Generator().manual_seed(0)
    state = {k: (torch.zeros(s, dtype=torch.long) if k.endswith("num_batches_tracked")
                 else torch.rand(s, generator=gen) + 0.5) for k, s in released_table("r18").items()}
    return save_released(tmp_path_factory.mktemp("released") / "sfnet_r18.pth", state), state


def _mutate(state: dict, tmp_path: Path, drop=(), add=None, reshape=None) -> Path:
    changed = {k: v for k, v in state.items() if k not in drop}
    changed.update(add or {})
    for key, shape in (reshape or {}).items():
        changed[key] = torch.zeros(shape)
    return save_released(tmp_path / "mutated.pth", changed)


def test_cli_errors_are_one_line(tmp_path: Path, capsys, released_r18) -> None:
    source, state = released_r18
    out = tmp_path / "out.pt"
    classes3 = tmp_path / "three.yaml"
    classes3.write_text("classes:\n  - {name: a, color: [1, 2, 3]}\n  - {name: b, color: [4, 5, 6]}\n"
                        "  - {name: c, color: [7, 8, 9]}\n")
    tv = tmp_path / "resnet18-f37072fd.pth"
    import torchvision

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tv)
    foreign = tmp_path / "foreign.pth"
    torch.save({"encoder.conv.weight": torch.zeros(3, 3, 1, 1), "head.cls.weight": torch.zeros(2, 3, 1, 1)}, foreign)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(random.Random(0).randbytes(4096))  # the same bytes every run
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    pickled = tmp_path / "with_args.pth"
    torch.save({"state_dict": state, "args": argparse.Namespace(arch="x")}, pickled)
    seven = save_released(tmp_path / "seven.pth", {k: torch.zeros(s) for k, s in released_table("df1", 7).items()})
    project = tmp_path / "project.pt"
    save_checkpoint(project, build_model("sfnet_df1", 19), "sfnet_df1", ClassTable.cityscapes())
    lite = _mutate(state, tmp_path, add={"head.flow_align_module.flow_make.weight": torch.zeros(4, 128, 3, 3)})
    cases = [
        ([tmp_path / "nowhere.pth"], "nowhere.pth: file not found"),
        ([tv], "no decoder keys 'head.*' (it looks like an ImageNet backbone file: use it as "
               "model.pretrained_backbone)"),
        ([foreign], "not a released SFNet checkpoint: neither the ResNet deep stem"),
        ([garbage], "not a readable weights file"),
        ([truncated], "not a readable weights file (truncated or corrupt?)"),
        ([pickled], "argparse.Namespace"),
        ([project], "already a project checkpoint"),
        ([lite], "an SFNet-Lite checkpoint"),
        ([seven], "predicts 7 classes, not Cityscapes' 19; give --classes with a 7-class table"),
        ([source, "--classes", classes3], "three.yaml: has 3 classes but the released classifier"),
        ([source, "--model", "sfnet_resnet34"], "--model: 'sfnet_resnet34' is not a network of the released code"),
        ([source, "--model", "sfnet_df1"], "holds a released sfnet_resnet18 (network.sfnet_resnet.DeepR18_SF_deeply), "
                                           "not sfnet_df1"),
    ]
    for args, expected in cases:
        rc, stdout, err = run_import([*args, "--out", out], capsys)
        assert rc == 2 and err.count("\n") == 1 and err.startswith("sfnet-import: error: "), (args, err)
        assert expected in err, (args, err)
        assert "Traceback" not in err and not out.exists()
        assert not list(tmp_path.glob(".out.pt.*"))  # no staging file left behind


def test_unplaced_and_missing_keys_are_listed(tmp_path: Path, capsys, released_r18) -> None:
    source, state = released_r18
    mutated = _mutate(state, tmp_path, drop=("head.fpn_out_align.1.flow_make.weight", "layer2.1.bn2.running_var"),
                      add={"head.extra.weight": torch.zeros(1), "layer5.0.conv1.weight": torch.zeros(1)},
                      reshape={"head.fpn_in.0.0.bias": (64,)})
    rc, _, err = run_import([mutated, "--out", tmp_path / "out.pt"], capsys)
    assert rc == 2 and err.count("\n") == 1
    assert "2 keys that have no place in it: head.extra.weight, layer5.0.conv1.weight" in err
    assert "2 of its tensors missing: layer2.1.bn2.running_var, head.fpn_out_align.1.flow_make.weight" in err
    assert "head.fpn_in.0.0.bias (64,) (expected (128,))" in err


def test_output_rules(tmp_path: Path, capsys, released_r18) -> None:
    source, _ = released_r18
    out = tmp_path / "model.pt"
    out.write_bytes(b"precious")
    rc, _, err = run_import([source, "--out", out], capsys)
    assert rc == 2 and "exists" in err and "--overwrite" in err and out.read_bytes() == b"precious"
    before = source.read_bytes()
    rc, _, err = run_import([source, "--out", source, "--overwrite"], capsys)
    assert rc == 2 and "is the input" in err and source.read_bytes() == before
    rc, stdout, err = run_import([source, "--out", out, "--overwrite", "--model", "sfnet_resnet18"], capsys)
    assert rc == 0, err
    assert load_checkpoint(out).model_name == "sfnet_resnet18" and f"wrote {out}" in stdout


# ----------------------------------------------------------------------------- docs/model.md

def _doc_commands() -> list[str]:
    text = (ROOT / "docs" / "model.md").read_text()
    blocks = [body for language, body in fenced_blocks(text) if language in ("sh", "bash", "console", "shell")]
    return [line.strip().removeprefix("$ ") for block in blocks for line in block.splitlines() if line.strip()]


def test_docs_commands_run(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every shell command of docs/model.md runs (in a folder holding the files it names), and the
    variants table there is what bench/model_stats.py prints."""
    import yaml

    from sfnet_core.cli.evaluate_command import main as eval_main

    stats = model_stats()
    weights = random_released_weights(released_table("r18"), "r18", seed=4, size=(64, 128))
    save_released(tmp_path / "sfnet_r18_cityscapes.pth", weights)
    (tmp_path / "cityscapes_recipe.yaml").write_text(yaml.safe_dump({"data": {
        "kind": "synthetic", "crop_size": [32, 64], "workers": 0,
        "synthetic": {"train_frames": 2, "val_frames": 2, "height": 64, "width": 128}}}))
    monkeypatch.chdir(tmp_path)
    runners = {"sfnet-import": import_main, "sfnet-eval": eval_main}
    commands = _doc_commands()
    assert len(commands) >= 5
    stats_out = None
    mious = []
    for command in commands:
        words = shlex.split(command)
        if words[:2] == ["python", "bench/model_stats.py"]:
            rc = stats.main(words[2:])
            stats_out = capsys.readouterr().out
        else:
            assert words[0] in runners, f"docs/model.md: no test runs {command!r}"
            rc = runners[words[0]](words[1:])
            out, err = capsys.readouterr()
            if words[0] == "sfnet-eval":
                mious.append(json.loads(out.splitlines()[-1])["miou"])
        assert rc == 0, command
    assert len(mious) == 2 and stats_out is not None
    assert load_checkpoint(tmp_path / "weights" / "sfnet_r18_ac_false.pt").model_options["fam_align_corners"] is False

    printed = {}
    for line in stats_out.splitlines()[2:]:
        if not line.strip():
            break
        cells = re.split(r"\s{2,}", line.strip())
        printed[cells[0]] = cells
    text = (ROOT / "docs" / "model.md").read_text()
    table = text[text.index("| model | params M"):].split("\n\n", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]
    assert {r[0] for r in rows} == set(printed)
    for label, params, released, paper, g1, g2, paper_g in rows:
        p = printed[label]  # model, params, released, paper, dev, gmacs..., paper gflops, dev
        assert [params, released, paper, g1, g2, paper_g] == [p[1], p[2], p[3], p[5], p[6], p[7]], label


def test_sfnet_import_console_script(tmp_path: Path) -> None:
    """The first sfnet-import command of docs/model.md, as a real process."""
    command = next(c for c in _doc_commands() if c.startswith("sfnet-import"))
    words = shlex.split(command)
    state = {k: (torch.zeros(s, dtype=torch.long) if k.endswith("num_batches_tracked") else torch.rand(s))
             for k, s in released_table("df1").items()}
    save_released(tmp_path / words[1], state)
    script = Path(sys.executable).parent / "sfnet-import"
    prefix = [str(script)] if script.exists() else [sys.executable, "-m", "sfnet_core.cli.import_command"]
    proc = subprocess.run(prefix + words[1:], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "-> sfnet_df1, 19 classes, fpn_dim 64" in proc.stdout
    assert load_checkpoint(tmp_path / words[3]).model_name == "sfnet_df1"
