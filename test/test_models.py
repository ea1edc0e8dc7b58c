"""SFNet models: output contracts, the FAM, fidelity to the paper's counts, pretrained loading."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from sfnet_core.errors import ConfigError, SFNetError
from sfnet_core.models import MODEL_VARIANTS, PretrainedWeightsError, build_model
from sfnet_core.models.flow_alignment import FlowAlignmentModule, flow_to_pixels, flow_warp
from sfnet_core.models.heads import adaptive_avg_pool2d

ROOT = Path(__file__).resolve().parents[1]
# FAMs per variant (top-down, fuse="bilinear") = deep-supervision heads when aux=True.
LEVELS = {"sfnet_resnet18": 3, "sfnet_resnet50": 3, "sfnet_resnet101": 3, "sfnet_shufflenetv2": 3,
          "sfnet_df1": 2, "sfnet_df2": 2, "fpn_resnet18": 0, "fcn_resnet18": 0}
AUX_HEADS = {**LEVELS, "fpn_resnet18": 3, "fcn_resnet18": 1}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These tiny forwards are dominated by OpenMP hand-offs: on a busy 2-core machine one
    # thread is ~10x faster than two. Restored for the other test modules.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_variant_table_is_the_spec() -> None:
    assert set(MODEL_VARIANTS) == set(LEVELS)


@pytest.mark.parametrize("name", sorted(LEVELS))
def test_output_contract(name: str) -> None:
    model = build_model(name, 3, aux=True)
    assert model.num_classes == 3
    x = torch.randn(2, 3, 64, 64)
    model.train()
    logits, aux, flows = model(x, return_flows=True)
    assert logits.shape == (2, 3, 64, 64)
    assert len(aux) == AUX_HEADS[name] and all(a.shape == (2, 3, 64, 64) for a in aux)
    assert len(flows) == LEVELS[name]
    model.eval()
    with torch.no_grad():
        out = model(x)
        logits2, flows2 = model(x, return_flows=True)
    assert out.shape == (2, 3, 64, 64) and torch.equal(out, logits2)
    assert len(flows2) == LEVELS[name]
    # coarse to fine, each (N, 2, h, w)
    areas = [f.shape[-2] * f.shape[-1] for f in flows2]
    assert areas == sorted(areas)
    assert all(f.shape[:2] == (2, 2) for f in flows2)


def test_no_aux_train_returns_empty_list() -> None:
    model = build_model("sfnet_resnet18", 4).train()
    logits, aux = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 4, 64, 64) and aux == []
    assert not any(k.startswith("aux_heads.") for k in model.state_dict())
    with_aux = build_model("sfnet_resnet18", 4, aux=True)
    extra = set(with_aux.state_dict()) - set(model.state_dict())
    assert extra and all(k.startswith("aux_heads.") for k in extra)
    assert set(model.state_dict()) <= set(with_aux.state_dict())


@pytest.mark.parametrize("fuse", ["bilinear", "fam"])
def test_odd_size(fuse: str) -> None:
    model = build_model("sfnet_resnet18", 5, aux=True, fuse=fuse)
    x = torch.randn(1, 3, 65, 97)
    model.eval()
    with torch.no_grad():
        logits, flows = model(x, return_flows=True)
    assert logits.shape == (1, 5, 65, 97)
    # laterals of a 65x97 input: 17x25 (1/4), 9x13, 5x7
    top_down = [(5, 7), (9, 13), (17, 25)]
    expected = top_down + ([(17, 25)] * 3 if fuse == "fam" else [])
    assert [tuple(f.shape[-2:]) for f in flows] == expected
    model.train()
    logits, aux = model(torch.randn(2, 3, 65, 97))
    assert logits.shape == (2, 5, 65, 97) and all(a.shape == (2, 5, 65, 97) for a in aux)


def test_zero_flow_fam_is_bilinear_upsampling() -> None:
    fam = FlowAlignmentModule(16)
    torch.nn.init.zeros_(fam.flow_make.weight)
    low, high = torch.randn(2, 16, 33, 47), torch.randn(2, 16, 17, 24)
    warped, flow = fam(low, high)
    assert flow.shape == (2, 2, 33, 47) and not flow.any()
    expected = F.interpolate(high, size=(33, 47), mode="bilinear", align_corners=True)
    torch.testing.assert_close(warped, expected, atol=1e-5, rtol=0)


def test_flow_units_are_pixels_of_the_flow_grid() -> None:
    # A feature whose value is its own x (resp. y) pixel coordinate, warped onto a grid of the
    # same size with a constant raw flow: away from the borders the output shifts by exactly
    # the displacement flow_to_pixels reports.
    h, w = 9, 13
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    feature = torch.stack((xs, ys))[None]
    raw = torch.empty(1, 2, h, w)
    raw[:, 0], raw[:, 1] = 1.5, -2.0
    out = flow_warp(feature, raw)
    px = flow_to_pixels(raw)
    inner = (slice(None), slice(2, -2), slice(2, -2))
    torch.testing.assert_close((out[0] - feature[0])[inner], px[0][inner], atol=1e-5, rtol=0)
    assert abs(px[0, 0, 0, 0].item() - 1.5 * (w - 1) / (2 * w)) < 1e-6


def test_flow_units_without_align_corners() -> None:
    # align_corners=False (the released code before 2022-07): the identity grid linspace(-1, 1)
    # lands on the outer pixel edges, i.e. on x * W / (W - 1) - 0.5 for a same-size map, and a
    # raw flow f moves that by exactly f / 2 pixels, which flow_to_pixels reports.
    h, w = 9, 13
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    feature = torch.stack((xs, ys))[None]
    raw = torch.empty(1, 2, h, w)
    raw[:, 0], raw[:, 1] = 1.5, -2.0
    out = flow_warp(feature, raw, align_corners=False)
    px = flow_to_pixels(raw, align_corners=False)
    base = torch.stack((xs * w / (w - 1) - 0.5, ys * h / (h - 1) - 0.5))
    inner = (slice(None), slice(3, -3), slice(3, -3))
    torch.testing.assert_close((out[0] - base)[inner], px[0][inner], atol=1e-5, rtol=0)
    assert torch.equal(px, raw * 0.5)


def test_fam_align_corners_option() -> None:
    default = build_model("sfnet_resnet18", 5).eval()
    other = build_model("sfnet_resnet18", 5, fam_align_corners=False).eval()
    assert all(fam.align_corners for fam in default.decoder.align)
    assert not any(fam.align_corners for fam in other.decoder.align)
    other.load_state_dict(default.state_dict())  # same weights, another sampling
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, flows_a = default(x, return_flows=True)
        b, flows_b = other(x, return_flows=True)
    assert not torch.allclose(a, b)
    # pixels reported with the module's own convention
    assert torch.allclose(flows_b[-1] * 2, other.decoder(other.backbone(x))[2][-1])


def test_ppm_branches_have_no_relu() -> None:
    # As the released PSPModule: pool, 1x1 conv, BN, no ReLU; ppm_relu=True (this project's models
    # before issue #10) has the same parameter names.
    model = build_model("sfnet_resnet18", 5)
    for stage in model.decoder.ppm.stages:
        assert [type(m) for m in stage] == [torch.nn.Conv2d, torch.nn.BatchNorm2d]
    old = build_model("sfnet_resnet18", 5, ppm_relu=True)
    assert all(isinstance(stage[-1], torch.nn.ReLU) for stage in old.decoder.ppm.stages)
    assert list(old.state_dict()) == list(model.state_dict())
    old.load_state_dict(model.state_dict())
    for m in (model, old):
        m.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(model(x), old(x))


def test_checkpoint_options_of_older_versions_build() -> None:
    # Checkpoints written before fam_align_corners / ppm_relu existed carry neither: they build
    # with the FAM sampling they were trained with (align_corners=True).
    model = build_model("sfnet_resnet18", 5, **{"fpn_dim": 64, "fuse": "bilinear"})
    assert all(fam.align_corners for fam in model.decoder.align)


def test_gradients_reach_the_flow_convs() -> None:
    model = build_model("sfnet_resnet18", 3, aux=True).train()
    logits, aux = model(torch.randn(2, 3, 64, 64))
    target = torch.randint(0, 3, (2, 64, 64))
    loss = F.cross_entropy(logits, target) + sum(F.cross_entropy(a, target) for a in aux)
    loss.backward()
    for fam in model.decoder.align:
        for conv in (fam.flow_make, fam.down_h, fam.down_l):
            assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def test_adaptive_pool_matches_torch() -> None:
    for size in [(2, 3), (5, 7), (13, 9)]:
        x = torch.randn(2, 4, *size)
        for bins in (1, 2, 3, 6):
            torch.testing.assert_close(adaptive_avg_pool2d(x, bins), F.adaptive_avg_pool2d(x, bins))


# ------------------------------------------------------------------ fidelity to the paper and the released code

@pytest.mark.parametrize("name,paper,tolerance", [
    ("sfnet_resnet18", 12.87e6, 0.005),   # Tables 3 and 4
    ("sfnet_resnet101", 50.32e6, 0.005),  # Table 4
])
def test_parameter_counts_match_the_paper(name: str, paper: float, tolerance: float) -> None:
    with torch.device("meta"):
        count = n_params(build_model(name, 19))
        with_aux = n_params(build_model(name, 19, aux=True))
    assert abs(count / paper - 1) < tolerance
    assert with_aux > count  # the paper counts the inference network, without aux heads


@pytest.mark.parametrize("name", ["sfnet_resnet18", "sfnet_resnet50", "sfnet_resnet101", "sfnet_df1", "sfnet_df2"])
def test_parameter_counts_equal_the_released_code(name: str) -> None:
    # The released network has exactly these parameters plus one bias per lateral conv channel
    # (folded into the BatchNorm here). DF1/DF2: 8,422,387 / 17,876,467 measured on the released
    # code (issue #10); the paper's table says 9.03M / 10.53M.
    released = _model_stats().RELEASED_PARAMS[name]
    with torch.device("meta"):
        model = build_model(name, 19)
    laterals = sum(layer[0].out_channels for layer in model.decoder.lateral)
    assert n_params(model) + laterals == released
    if name.startswith("sfnet_df"):
        assert model.decoder.lateral[0][0].out_channels == 64  # the released fpn_dim


def test_df1_with_fpn_dim_128_is_the_papers_df1() -> None:
    # The paper's DF1 figures (9.03M, 18.6 GFLOPs) fit fpn_dim 128, not the released 64.
    with torch.device("meta"):
        count = n_params(build_model("sfnet_df1", 19, fpn_dim=128))
    assert abs(count / 9.03e6 - 1) < 0.03


def test_df2_encoder_alone_exceeds_the_papers_df2_count() -> None:
    # Why sfnet_df2 cannot match Table 3's 10.53M: its encoder (DF paper's layer table, 1.77
    # GMACs at 224x224) has more parameters than that on its own.
    from torch.utils.flop_counter import FlopCounterMode

    from sfnet_core.models.dfnet import df2

    with torch.device("meta"):
        encoder = df2()
        with FlopCounterMode(display=False) as counter:
            encoder(torch.empty(1, 3, 224, 224))
    assert abs(counter.get_total_flops() / 2e9 - 1.77) < 0.01
    assert n_params(encoder) > 10.53e6


def _model_stats():
    spec = importlib.util.spec_from_file_location("model_stats", ROOT / "bench" / "model_stats.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("model_stats", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_macs_match_the_papers_gflops() -> None:
    stats = _model_stats()
    rows = {r.label: r for r in stats.collect_rows(["sfnet_resnet18", "sfnet_df1"], sizes=[(1024, 1024)])}
    assert abs(rows["sfnet_resnet18"].gmacs_dev) < 0.05   # 123.5 (Tables 1, 4)
    assert abs(rows["sfnet_resnet18"].params_dev) < 0.005
    assert rows["sfnet_resnet18"].released_params_m == pytest.approx(12.869715)
    assert abs(rows["sfnet_df1 (fpn_dim=128)"].gmacs_dev) < 0.05   # 18.6 (Table 1(d))
    assert rows["sfnet_df1"].gmacs[(1024, 1024)] < rows["sfnet_df1 (fpn_dim=128)"].gmacs[(1024, 1024)]
    assert rows["sfnet_df1"].released_params_m == pytest.approx(8.422387)
    # FAMs cost little: the FPN baseline is cheaper by ~1%.
    fpn = stats.count_gmacs("fpn_resnet18", (1024, 1024))
    assert 0.98 < fpn / rows["sfnet_resnet18"].gmacs[(1024, 1024)] < 1.0
    table = stats.format_table(list(rows.values()), sizes=[(1024, 1024)])
    assert "sfnet_resnet18" in table and "123.5" in table


def test_model_stats_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert _model_stats().main(["--variants", "sfnet_df1"]) == 0
    out = capsys.readouterr().out
    assert "sfnet_df1" in out and "GMACs 1024x2048" in out and "released M" in out


# ------------------------------------------------------------------ options and errors

@pytest.mark.parametrize("kwargs,match", [
    ({"name": "sfnet_resnet34"}, "unknown model 'sfnet_resnet34'"),
    ({"fuse": "xyz"}, "'fuse'.*'bilinear', 'fam'.*'xyz'"),
    ({"upsample": "nearest"}, "'upsample'"),
    ({"stem": "7x7"}, "'stem'"),
    ({"fpn_dim": 63}, "'fpn_dim'"),
    ({"dilate_last_stages": 1}, "'dilate_last_stages'"),
    ({"num_classes": 0}, "'num_classes'"),
    ({"aux": "yes"}, "'aux'"),
    ({"bogus": 1}, "unknown option.*'bogus'.*valid options: stem"),
    ({"fam_align_corners": "false"}, "'fam_align_corners'"),
    ({"ppm_relu": 1}, "'ppm_relu'"),
    ({"name": "sfnet_df1", "stem": "deep"}, "sfnet_df1.*unknown option.*'stem'"),
])
def test_config_errors(kwargs: dict, match: str) -> None:
    args = {"name": "sfnet_resnet18", "num_classes": 19, **kwargs}
    with pytest.raises(ConfigError, match=match):
        build_model(**args)


def test_options_change_the_architecture() -> None:
    tv = build_model("sfnet_resnet18", 19, stem="torchvision", dilate_last_stages=False)
    assert tv.backbone.conv1.kernel_size == (7, 7)
    assert tv.backbone.layer4[0].conv2.dilation == (1, 1)
    deep = build_model("sfnet_resnet18", 19)
    assert deep.backbone.layer3[1].conv2.dilation == (2, 2)
    assert deep.backbone.layer4[1].conv2.dilation == (4, 4)
    assert len(build_model("sfnet_resnet18", 19, fuse="fam").decoder.fuse_align) == 3
    assert len(build_model("sfnet_resnet50", 19, upsample="bilinear").decoder.align) == 0
    assert deep.variant == "sfnet_resnet18" and deep.options == {}


# ------------------------------------------------------------------ pretrained backbones

def test_pretrained_roundtrip(tmp_path: Path) -> None:
    source = build_model("sfnet_resnet18", 19)
    state = source.backbone.state_dict()
    raw, wrapped = tmp_path / "raw.pt", tmp_path / "wrapped.pt"
    torch.save(state, raw)
    fc = {"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    torch.save({"state_dict": {**state, **fc}, "epoch": 90}, wrapped)
    for path in (raw, wrapped):
        model = build_model("sfnet_resnet18", 19, pretrained_backbone=str(path))
        for key, value in model.backbone.state_dict().items():
            assert torch.equal(value, state[key]), key
    # the decoder keeps its own initialisation
    assert not torch.equal(model.decoder.classifier.weight, source.decoder.classifier.weight)


def test_pretrained_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "resnet18.pth"
    with pytest.raises(PretrainedWeightsError, match=f"{path}: pretrained backbone file not found"):
        build_model("sfnet_resnet18", 19, pretrained_backbone=path)


def test_pretrained_wrong_keys_and_shapes(tmp_path: Path) -> None:
    deep = build_model("sfnet_resnet18", 19).backbone.state_dict()
    path = tmp_path / "deep.pt"
    torch.save(deep, path)
    with pytest.raises(PretrainedWeightsError) as err:  # deep-stem file into a 7x7-stem model
        build_model("sfnet_resnet18", 19, stem="torchvision", pretrained_backbone=path)
    message = str(err.value)
    assert str(path) in message and "missing keys: conv1.weight" in message
    assert "use the model option stem: deep" in message
    assert "keys of the file not used: conv1.* (" in message
    assert isinstance(err.value, SFNetError) and "\n" not in message

    bad = dict(deep)
    bad["layer1.0.conv1.weight"] = torch.zeros(64, 128, 1, 1)
    torch.save(bad, path)
    shape_msg = r"1 shape mismatches: layer1.0.conv1.weight: file \(64, 128, 1, 1\)"
    with pytest.raises(PretrainedWeightsError, match=shape_msg):
        build_model("sfnet_resnet18", 19, pretrained_backbone=path)

    torch.save([1, 2, 3], path)
    with pytest.raises(PretrainedWeightsError, match="expected a state dict"):
        build_model("sfnet_resnet18", 19, pretrained_backbone=path)

    path.write_bytes(b"\x80\x02not a pickle at all")
    with pytest.raises(PretrainedWeightsError, match="not a readable weights file"):
        build_model("sfnet_resnet18", 19, pretrained_backbone=path)


def test_torchvision_weights_load_into_torchvision_stem(tmp_path: Path) -> None:
    tv = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18-f37072fd.pth"  # torchvision's file name
    torch.save(tv.state_dict(), path)
    model = build_model("sfnet_resnet18", 19, stem="torchvision", pretrained_backbone=path)
    assert torch.equal(model.backbone.conv1.weight, tv.conv1.weight)
    assert torch.equal(model.backbone.layer4[1].bn2.running_var, tv.layer4[1].bn2.running_var)
    with pytest.raises(PretrainedWeightsError, match="7x7-stem torchvision file: set the model option stem: tor"):
        build_model("sfnet_resnet18", 19, pretrained_backbone=path)

    sn = torchvision.models.shufflenet_v2_x1_0(weights=None)
    torch.save(sn.state_dict(), path)  # its conv5/fc classifier parts are skipped
    model = build_model("sfnet_shufflenetv2", 19, pretrained_backbone=path)
    assert torch.equal(model.backbone.stage4[0].branch1[0].weight, sn.stage4[0].branch1[0].weight)


@pytest.mark.parametrize("block_name", ["BasicBlock", "Bottleneck"])
@pytest.mark.parametrize("inplanes,planes,stride", [(64, 64, 1), (64, 128, 2), (256, 64, 1)])
def test_blocks_are_torchvisions(block_name: str, inplanes: int, planes: int, stride: int) -> None:
    """``sfnet_core.models.blocks`` against torchvision's own blocks: the same state-dict keys and
    shapes, and the same output for the same weights (random BN statistics, training and eval)."""
    from torchvision.models import resnet as tv_resnet

    from sfnet_core.models import blocks
    from sfnet_core.models.backbones import make_res_stage

    ours = make_res_stage(getattr(blocks, block_name), inplanes, planes, 2, stride)
    theirs = make_res_stage(getattr(tv_resnet, block_name), inplanes, planes, 2, stride)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    state = {k: torch.rand_like(v) + 0.5 if v.is_floating_point() else v for k, v in theirs.state_dict().items()}
    ours.load_state_dict(state)
    theirs.load_state_dict(state)
    x = torch.randn(2, inplanes, 17, 22)
    for train in (False, True):
        ours.train(train)
        theirs.train(train)
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)
    assert ours[0].stride == theirs[0].stride == stride


def test_backbones_equal_torchvisions_networks() -> None:
    """Whole encoders: torchvision's ResNet-18/50 (7x7 stem, no dilation) and ShuffleNetV2 1.0x
    weights give, in ours, the same maps as torchvision's own networks."""
    from sfnet_core.models.backbones import resnet18, resnet50, shufflenet_v2

    def resnet_levels(t: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        x = t.maxpool(t.relu(t.bn1(t.conv1(x))))
        levels = []
        for stage in (t.layer1, t.layer2, t.layer3, t.layer4):
            levels.append(x := stage(x))
        return levels

    def shufflenet_levels(t: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        levels = [x := t.maxpool(t.conv1(x))]
        for stage in (t.stage2, t.stage3, t.stage4):
            levels.append(x := stage(x))
        return levels

    pairs = ((resnet18("torchvision", False), torchvision.models.resnet18(weights=None), resnet_levels),
             (resnet50("torchvision", False), torchvision.models.resnet50(weights=None), resnet_levels),
             (shufflenet_v2(), torchvision.models.shufflenet_v2_x1_0(weights=None), shufflenet_levels))
    for ours, theirs, levels in pairs:
        state = {k: torch.rand_like(v) + 0.5 if v.is_floating_point() else v for k, v in theirs.state_dict().items()}
        theirs.load_state_dict(state)
        ours.load_state_dict({k: v for k, v in state.items() if not k.startswith(ours.pretrained_ignore)})
        ours.eval()
        theirs.eval()
        x = torch.randn(1, 3, 64, 96)
        for a, b in zip(ours(x), levels(theirs, x), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_building_a_model_does_not_import_torchvision() -> None:
    """torchvision's import costs ~2 s per process (blocks.py): no variant, nor the checkpoint
    loader or the Segmenter, imports it."""
    code = ("import sys; from sfnet_core.models import MODEL_VARIANTS, build_model; "
            "from sfnet_core.inference import Segmenter; import sfnet_core.checkpoint; "
            "[build_model(n, 19) for n in MODEL_VARIANTS]; assert 'torchvision' not in sys.modules, 'imported'")
    import subprocess

    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-2000:]


def _imagenet_file(backbone: torch.nn.Module, classifier_in: int) -> dict[str, torch.Tensor]:
    """An ImageNet state dict laid out as the authors' files: the encoder's names + ``fc``."""
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in backbone.state_dict().items()}
    return {**state, "fc.weight": torch.randn(1000, classifier_in), "fc.bias": torch.randn(1000)}


@pytest.mark.parametrize("name,file_name,classifier_in", [
    ("sfnet_resnet18", "resnet18-deep-inplane128.pth", 512),
    ("sfnet_resnet50", "resnet50-deep.pth", 2048),
    ("sfnet_df1", "df1_imagenet.pth", 512),
    ("sfnet_df2", "df2_imagenet.pth", 512),
])
def test_authors_imagenet_files_load(tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str,
                                     file_name: str, classifier_in: int) -> None:
    import logging

    import numpy as np

    from sfnet_core.models import load_backbone_weights

    backbone = build_model(name, 19).backbone
    state = _imagenet_file(backbone, classifier_in)
    path = tmp_path / file_name
    # as an ImageNet training script saves it: DataParallel prefixes and a numpy metric
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 90,
                "best_prec1": np.float64(71.2)}, path)
    with caplog.at_level(logging.INFO, logger="sfnet_core.models.pretrained"):
        report = load_backbone_weights(backbone, path)
    assert report.unused == ["fc.weight", "fc.bias"] and not report.filled
    assert "not used: fc.weight, fc.bias" in caplog.text
    assert all(r.levelno == logging.INFO for r in caplog.records)
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_released_sfnet_checkpoint_as_backbone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The encoder of a released SFNet-R18 checkpoint (layer0.* = deep stem) initialises a backbone;
    the head's keys are named as not used (a warning: they are not a classifier)."""
    import logging

    from sfnet_core.models.released import export_released

    source = build_model("sfnet_resnet18", 19, aux=True)
    released = export_released(source.state_dict(), "sfnet_resnet18")
    path = tmp_path / "sfnet_r18_released.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in released.items()}, "epoch": 3}, path)
    with caplog.at_level(logging.INFO, logger="sfnet_core.models.pretrained"):
        model = build_model("sfnet_resnet18", 19, pretrained_backbone=path)
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, source.backbone.state_dict()[key]), key
    assert "not used: head.* (" in caplog.text and caplog.records[-1].levelno == logging.WARNING


def test_pretrained_refuses_pickled_objects(tmp_path: Path) -> None:
    import argparse

    path = tmp_path / "with_args.pth"
    torch.save({"state_dict": build_model("sfnet_df1", 19).backbone.state_dict(),
                "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(PretrainedWeightsError) as err:
        build_model("sfnet_df1", 19, pretrained_backbone=path)
    message = str(err.value)
    assert "argparse.Namespace" in message and "cannot be loaded safely" in message and "\n" not in message
    assert "weights_only" not in message  # never the advice to load it anyway


# ------------------------------------------------------------------ export

def test_torch_export_keeps_dynamic_shapes() -> None:
    model = build_model("sfnet_df1", 3, fuse="fam").eval()
    dims = {0: torch.export.Dim("n", min=1, max=8), 2: torch.export.Dim("h", min=64, max=2048),
            3: torch.export.Dim("w", min=64, max=2048)}
    program = torch.export.export(model, (torch.randn(2, 3, 64, 96),), dynamic_shapes={"x": dims})
    x = torch.randn(1, 3, 65, 97)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x))


def test_onnx_export_dynamic_axes(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = build_model("sfnet_df1", 3).eval()
    path = tmp_path / "df1.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 64, 64),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "y": {0: "n", 2: "h", 3: "w"}},
                      opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 65, 97)
    with torch.no_grad():
        ref = model(x).numpy()
    out = session.run(None, {"x": x.numpy()})[0]
    assert out.shape == ref.shape == (2, 3, 65, 97)
    assert np.abs(out - ref).max() < 1e-3 * max(1.0, float(np.abs(ref).max()))
