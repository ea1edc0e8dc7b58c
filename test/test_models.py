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


# ------------------------------------------------------------------ fidelity to the paper

@pytest.mark.parametrize("name,paper,tolerance", [
    ("sfnet_resnet18", 12.87e6, 0.005),   # Tables 3 and 4
    ("sfnet_resnet101", 50.32e6, 0.005),  # Table 4
    ("sfnet_df1", 9.03e6, 0.03),          # Table 3
])
def test_parameter_counts_match_the_paper(name: str, paper: float, tolerance: float) -> None:
    with torch.device("meta"):
        count = n_params(build_model(name, 19))
        with_aux = n_params(build_model(name, 19, aux=True))
    assert abs(count / paper - 1) < tolerance
    assert with_aux > count  # the paper counts the inference network, without aux heads


def test_df2_encoder_alone_exceeds_the_papers_df2_count() -> None:
    # Why sfnet_df2 cannot match Table 3's 10.53M: its encoder (DF paper's layer table, 1.77
    # GMACs at 224x224) has more parameters than that on its own.
    from sfnet_core.models.dfnet import df2
    from torch.utils.flop_counter import FlopCounterMode

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
    assert abs(rows["sfnet_df1"].gmacs_dev) < 0.05        # 18.6 (Table 1(d))
    # FAMs cost little: the FPN baseline is cheaper by ~1%.
    fpn = stats.count_gmacs("fpn_resnet18", (1024, 1024))
    assert 0.98 < fpn / rows["sfnet_resnet18"].gmacs[(1024, 1024)] < 1.0
    table = stats.format_table(list(rows.values()), sizes=[(1024, 1024)])
    assert "sfnet_resnet18" in table and "123.5" in table


def test_model_stats_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert _model_stats().main(["--variants", "sfnet_df1"]) == 0
    out = capsys.readouterr().out
    assert "sfnet_df1" in out and "GMACs 1024x2048" in out


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
    assert "unexpected keys: conv1.0.weight" in message
    assert isinstance(err.value, SFNetError)

    bad = dict(deep)
    bad["layer1.0.conv1.weight"] = torch.zeros(64, 128, 1, 1)
    torch.save(bad, path)
    shape_msg = r"1 shape mismatches: layer1.0.conv1.weight: file \(64, 128, 1, 1\)"
    with pytest.raises(PretrainedWeightsError, match=shape_msg):
        build_model("sfnet_resnet18", 19, pretrained_backbone=path)

    torch.save([1, 2, 3], path)
    with pytest.raises(PretrainedWeightsError, match="expected a state dict"):
        build_model("sfnet_resnet18", 19, pretrained_backbone=path)


def test_torchvision_weights_load_into_torchvision_stem(tmp_path: Path) -> None:
    tv = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18_tv.pth"
    torch.save(tv.state_dict(), path)
    model = build_model("sfnet_resnet18", 19, stem="torchvision", pretrained_backbone=path)
    assert torch.equal(model.backbone.conv1.weight, tv.conv1.weight)
    assert torch.equal(model.backbone.layer4[1].bn2.running_var, tv.layer4[1].bn2.running_var)

    sn = torchvision.models.shufflenet_v2_x1_0(weights=None)
    torch.save(sn.state_dict(), path)  # its conv5/fc classifier parts are skipped
    model = build_model("sfnet_shufflenetv2", 19, pretrained_backbone=path)
    assert torch.equal(model.backbone.stage4[0].branch1[0].weight, sn.stage4[0].branch1[0].weight)


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
