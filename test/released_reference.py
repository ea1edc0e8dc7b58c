"""An independent model of the authors' released SFNet networks, for tests that need no released file.

Written from reading the released code (SFSegNets: ``network/sfnet_resnet.py``,
``network/sfnet_dfnet.py``, ``network/nn/operators.py``, ``network/resnet_d.py``,
``network/dfnet.py``); nothing here imports ``sfnet_core.models``, so the project's model is
checked against this, not against itself.

* ``R18_TABLE`` / ``DF2_DSN_TABLE``: the released SFNet-R18 and SFNet-DF2 (+dsn) state dicts,
  19 classes, as literal module tables (one line per module: conv / conv+bias / bn);
  ``released_table(arch, num_classes, dsn)`` generates the same for every released network.
* ``random_released_weights``: random tensors for a table, with BatchNorm statistics calibrated
  on an image batch (so activations stay well scaled through 100 layers, as in a trained net).
* ``released_forward``: the released eval-mode forward as plain functional calls over a state
  dict with the released names: ``(logits at the input size, dsn outputs coarse to fine)``.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor

Shape = tuple[int, ...]

# ----------------------------------------------------------------------------- key/shape tables
# Module lines: "<name> conv <out> <in> <k>" (weight only), "<name> convb <out> <in> <k>"
# (weight and bias), "<name> bn <c>" (weight, bias, running_mean, running_var, num_batches_tracked).
# A BasicBlock b of resnet_d / dfnet: conv1 3x3 (stride), bn1, conv2 3x3, bn2, [downsample.0 1x1, .1 BN].

R18_TABLE = """
layer0.0.0 conv 64 3 3
layer0.0.1 bn 64
layer0.0.3 conv 64 64 3
layer0.0.4 bn 64
layer0.0.6 conv 128 64 3
layer0.1 bn 128
layer1.0.conv1 conv 64 128 3
layer1.0.bn1 bn 64
layer1.0.conv2 conv 64 64 3
layer1.0.bn2 bn 64
layer1.0.downsample.0 conv 64 128 1
layer1.0.downsample.1 bn 64
layer1.1.conv1 conv 64 64 3
layer1.1.bn1 bn 64
layer1.1.conv2 conv 64 64 3
layer1.1.bn2 bn 64
layer2.0.conv1 conv 128 64 3
layer2.0.bn1 bn 128
layer2.0.conv2 conv 128 128 3
layer2.0.bn2 bn 128
layer2.0.downsample.0 conv 128 64 1
layer2.0.downsample.1 bn 128
layer2.1.conv1 conv 128 128 3
layer2.1.bn1 bn 128
layer2.1.conv2 conv 128 128 3
layer2.1.bn2 bn 128
layer3.0.conv1 conv 256 128 3
layer3.0.bn1 bn 256
layer3.0.conv2 conv 256 256 3
layer3.0.bn2 bn 256
layer3.0.downsample.0 conv 256 128 1
layer3.0.downsample.1 bn 256
layer3.1.conv1 conv 256 256 3
layer3.1.bn1 bn 256
layer3.1.conv2 conv 256 256 3
layer3.1.bn2 bn 256
layer4.0.conv1 conv 512 256 3
layer4.0.bn1 bn 512
layer4.0.conv2 conv 512 512 3
layer4.0.bn2 bn 512
layer4.0.downsample.0 conv 512 256 1
layer4.0.downsample.1 bn 512
layer4.1.conv1 conv 512 512 3
layer4.1.bn1 bn 512
layer4.1.conv2 conv 512 512 3
layer4.1.bn2 bn 512
head.ppm.stages.0.1 conv 128 512 1
head.ppm.stages.0.2 bn 128
head.ppm.stages.1.1 conv 128 512 1
head.ppm.stages.1.2 bn 128
head.ppm.stages.2.1 conv 128 512 1
head.ppm.stages.2.2 bn 128
head.ppm.stages.3.1 conv 128 512 1
head.ppm.stages.3.2 bn 128
head.ppm.bottleneck.0 conv 128 1024 1
head.ppm.bottleneck.1 bn 128
head.fpn_in.0.0 convb 128 64 1
head.fpn_in.0.1 bn 128
head.fpn_in.1.0 convb 128 128 1
head.fpn_in.1.1 bn 128
head.fpn_in.2.0 convb 128 256 1
head.fpn_in.2.1 bn 128
head.fpn_out.0.0.0 conv 128 128 3
head.fpn_out.0.0.1 bn 128
head.fpn_out.1.0.0 conv 128 128 3
head.fpn_out.1.0.1 bn 128
head.fpn_out.2.0.0 conv 128 128 3
head.fpn_out.2.0.1 bn 128
head.fpn_out_align.0.down_h conv 64 128 1
head.fpn_out_align.0.down_l conv 64 128 1
head.fpn_out_align.0.flow_make conv 2 128 3
head.fpn_out_align.1.down_h conv 64 128 1
head.fpn_out_align.1.down_l conv 64 128 1
head.fpn_out_align.1.flow_make conv 2 128 3
head.fpn_out_align.2.down_h conv 64 128 1
head.fpn_out_align.2.down_l conv 64 128 1
head.fpn_out_align.2.flow_make conv 2 128 3
head.conv_last.0.0 conv 128 512 3
head.conv_last.0.1 bn 128
head.conv_last.1 convb 19 128 1
"""


def _df2_backbone_lines() -> str:
    # dfnetv2, written out stage by stage (see DF2_DSN_TABLE's docstring line below).
    lines = ["backbone.stage1.0 conv 32 3 3", "backbone.stage1.1 bn 32",
             "backbone.stage1.3 conv 64 32 3", "backbone.stage1.4 bn 64"]
    for stage, inplanes, planes, blocks in (("stage2_1", 64, 64, 2), ("stage2_2", 64, 128, 1),
                                            ("stage3_1", 128, 128, 10), ("stage3_2", 128, 256, 1),
                                            ("stage4_1", 256, 256, 4), ("stage4_2", 256, 512, 2)):
        strided = stage.endswith("_1")
        for b in range(blocks):
            cin = inplanes if b == 0 else planes
            p = f"backbone.{stage}.{b}"
            lines += [f"{p}.conv1 conv {planes} {cin} 3", f"{p}.bn1 bn {planes}",
                      f"{p}.conv2 conv {planes} {planes} 3", f"{p}.bn2 bn {planes}"]
            if b == 0 and (strided or inplanes != planes):
                lines += [f"{p}.downsample.0 conv {planes} {inplanes} 1", f"{p}.downsample.1 bn {planes}"]
    return "\n".join(lines)


# SFNet-DF2 with dsn heads (AlignedDFnetv2_FPNDSN), 19 classes: dfnetv2 (stage2_1: 2 blocks 64 /2,
# stage2_2: 1 block 128, stage3_1: 10 blocks 128 /2, stage3_2: 1 block 256, stage4_1: 4 blocks
# 256 /2, stage4_2: 2 blocks 512) and UperNetAlignHead(fpn_inplanes [128, 256, 512], fpn_dim 64).
DF2_DSN_TABLE = _df2_backbone_lines() + """
head.ppm.stages.0.1 conv 64 512 1
head.ppm.stages.0.2 bn 64
head.ppm.stages.1.1 conv 64 512 1
head.ppm.stages.1.2 bn 64
head.ppm.stages.2.1 conv 64 512 1
head.ppm.stages.2.2 bn 64
head.ppm.stages.3.1 conv 64 512 1
head.ppm.stages.3.2 bn 64
head.ppm.bottleneck.0 conv 64 768 1
head.ppm.bottleneck.1 bn 64
head.fpn_in.0.0 convb 64 128 1
head.fpn_in.0.1 bn 64
head.fpn_in.1.0 convb 64 256 1
head.fpn_in.1.1 bn 64
head.fpn_out.0.0.0 conv 64 64 3
head.fpn_out.0.0.1 bn 64
head.fpn_out_align.0.down_h conv 32 64 1
head.fpn_out_align.0.down_l conv 32 64 1
head.fpn_out_align.0.flow_make conv 2 64 3
head.dsn.0.0 convb 64 64 3
head.dsn.0.1 bn 64
head.dsn.0.4 convb 19 64 1
head.fpn_out.1.0.0 conv 64 64 3
head.fpn_out.1.0.1 bn 64
head.fpn_out_align.1.down_h conv 32 64 1
head.fpn_out_align.1.down_l conv 32 64 1
head.fpn_out_align.1.flow_make conv 2 64 3
head.dsn.1.0 convb 64 64 3
head.dsn.1.1 bn 64
head.dsn.1.4 convb 19 64 1
head.conv_last.0.0 conv 64 192 3
head.conv_last.0.1 bn 64
head.conv_last.1 convb 19 64 1
"""


def parse_table(text: str) -> OrderedDict[str, Shape]:
    """Module lines -> ``{state-dict key: shape}``."""
    out: OrderedDict[str, Shape] = OrderedDict()
    for line in text.strip().splitlines():
        name, kind, *dims = line.split()
        sizes = [int(d) for d in dims]
        if kind in ("conv", "convb"):
            cout, cin, k = sizes
            out[f"{name}.weight"] = (cout, cin, k, k)
            if kind == "convb":
                out[f"{name}.bias"] = (cout,)
        elif kind == "bn":
            (c,) = sizes
            for leaf in ("weight", "bias", "running_mean", "running_var"):
                out[f"{name}.{leaf}"] = (c,)
            out[f"{name}.num_batches_tracked"] = ()
        else:
            raise ValueError(line)
    return out


# arch -> (encoder kind, layer spec, decoder input channels, fpn_dim)
ARCHS = {
    "r18": ("resnet", ("basic", (2, 2, 2, 2)), (64, 128, 256, 512), 128),
    "r50": ("resnet", ("bottleneck", (3, 4, 6, 3)), (256, 512, 1024, 2048), 256),
    "r101": ("resnet", ("bottleneck", (3, 4, 23, 3)), (256, 512, 1024, 2048), 256),
    "df1": ("dfnet", (("stage2", 64, 3, 2), ("stage3", 128, 3, 2), ("stage4", 256, 3, 2), ("stage5", 512, 1, 1)),
            (128, 256, 512), 64),
    "df2": ("dfnet", (("stage2_1", 64, 2, 2), ("stage2_2", 128, 1, 1), ("stage3_1", 128, 10, 2),
                      ("stage3_2", 256, 1, 1), ("stage4_1", 256, 4, 2), ("stage4_2", 512, 2, 1)),
            (128, 256, 512), 64),
}
DF_OUTPUTS = {"df1": ("stage3", "stage4", "stage5"), "df2": ("stage2_2", "stage3_2", "stage4_2")}
PROJECT_NAME = {"r18": "sfnet_resnet18", "r50": "sfnet_resnet50", "r101": "sfnet_resnet101",
                "df1": "sfnet_df1", "df2": "sfnet_df2"}


def released_table(arch: str, num_classes: int = 19, dsn: bool = False) -> OrderedDict[str, Shape]:
    """Key/shape table of a released network (``arch`` a key of ARCHS)."""
    kind, spec, channels, fpn_dim = ARCHS[arch]
    lines: list[str] = []
    if kind == "resnet":
        block, layers = spec
        expansion = 1 if block == "basic" else 4
        lines += ["layer0.0.0 conv 64 3 3", "layer0.0.1 bn 64", "layer0.0.3 conv 64 64 3", "layer0.0.4 bn 64",
                  "layer0.0.6 conv 128 64 3", "layer0.1 bn 128"]
        inplanes = 128
        for n, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers), start=1):
            for b in range(blocks):
                p, cin = f"layer{n}.{b}", inplanes if b == 0 else planes * expansion
                if block == "basic":
                    lines += [f"{p}.conv1 conv {planes} {cin} 3", f"{p}.bn1 bn {planes}",
                              f"{p}.conv2 conv {planes} {planes} 3", f"{p}.bn2 bn {planes}"]
                else:
                    lines += [f"{p}.conv1 conv {planes} {cin} 1", f"{p}.bn1 bn {planes}",
                              f"{p}.conv2 conv {planes} {planes} 3", f"{p}.bn2 bn {planes}",
                              f"{p}.conv3 conv {planes * 4} {planes} 1", f"{p}.bn3 bn {planes * 4}"]
                if b == 0 and (n > 1 or inplanes != planes * expansion):
                    lines += [f"{p}.downsample.0 conv {planes * expansion} {inplanes} 1",
                              f"{p}.downsample.1 bn {planes * expansion}"]
            inplanes = planes * expansion
    else:
        lines += ["backbone.stage1.0 conv 32 3 3", "backbone.stage1.1 bn 32",
                  "backbone.stage1.3 conv 64 32 3", "backbone.stage1.4 bn 64"]
        inplanes = 64
        for stage, planes, blocks, stride in spec:
            for b in range(blocks):
                p, cin = f"backbone.{stage}.{b}", inplanes if b == 0 else planes
                lines += [f"{p}.conv1 conv {planes} {cin} 3", f"{p}.bn1 bn {planes}",
                          f"{p}.conv2 conv {planes} {planes} 3", f"{p}.bn2 bn {planes}"]
                if b == 0 and (stride != 1 or inplanes != planes):
                    lines += [f"{p}.downsample.0 conv {planes} {inplanes} 1", f"{p}.downsample.1 bn {planes}"]
            inplanes = planes
    top = channels[-1]
    for i in range(4):
        lines += [f"head.ppm.stages.{i}.1 conv {fpn_dim} {top} 1", f"head.ppm.stages.{i}.2 bn {fpn_dim}"]
    lines += [f"head.ppm.bottleneck.0 conv {fpn_dim} {top + 4 * fpn_dim} 1", f"head.ppm.bottleneck.1 bn {fpn_dim}"]
    for i, c in enumerate(channels[:-1]):
        lines += [f"head.fpn_in.{i}.0 convb {fpn_dim} {c} 1", f"head.fpn_in.{i}.1 bn {fpn_dim}"]
    for i in range(len(channels) - 1):
        lines += [f"head.fpn_out.{i}.0.0 conv {fpn_dim} {fpn_dim} 3", f"head.fpn_out.{i}.0.1 bn {fpn_dim}",
                  f"head.fpn_out_align.{i}.down_h conv {fpn_dim // 2} {fpn_dim} 1",
                  f"head.fpn_out_align.{i}.down_l conv {fpn_dim // 2} {fpn_dim} 1",
                  f"head.fpn_out_align.{i}.flow_make conv 2 {fpn_dim} 3"]
        if dsn:
            lines += [f"head.dsn.{i}.0 convb {fpn_dim} {fpn_dim} 3", f"head.dsn.{i}.1 bn {fpn_dim}",
                      f"head.dsn.{i}.4 convb {num_classes} {fpn_dim} 1"]
    lines += [f"head.conv_last.0.0 conv {fpn_dim} {len(channels) * fpn_dim} 3", f"head.conv_last.0.1 bn {fpn_dim}",
              f"head.conv_last.1 convb {num_classes} {fpn_dim} 1"]
    return parse_table("\n".join(lines))


def parameter_count(table: dict[str, Shape]) -> int:
    """Parameters of a table (conv weights and biases, BN weight and bias; no buffers)."""
    total = 0
    for key, shape in table.items():
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


# ----------------------------------------------------------------------------- the forward pass

class _Weights:
    """The state dict plus the BatchNorm calibration switch (see ``random_released_weights``)."""

    def __init__(self, state: dict[str, Tensor], calibrate: bool, generator: torch.Generator | None) -> None:
        self.w, self.calibrate, self.gen = state, calibrate, generator

    def conv(self, x: Tensor, name: str, stride: int = 1, padding: int = 0, dilation: int = 1) -> Tensor:
        return F.conv2d(x, self.w[f"{name}.weight"], self.w.get(f"{name}.bias"), stride, padding, dilation)

    def bn(self, x: Tensor, name: str) -> Tensor:
        if self.calibrate:  # running statistics of this batch, slightly perturbed
            mean = x.mean(dim=(0, 2, 3))
            var = x.var(dim=(0, 2, 3), unbiased=False)
            c = mean.numel()
            self.w[f"{name}.running_mean"] = mean + 0.05 * torch.randn(c, generator=self.gen) * var.sqrt()
            self.w[f"{name}.running_var"] = var * (0.8 + 0.4 * torch.rand(c, generator=self.gen)) + 1e-3
        return F.batch_norm(x, self.w[f"{name}.running_mean"], self.w[f"{name}.running_var"],
                            self.w[f"{name}.weight"], self.w[f"{name}.bias"], False, 0.0, 1e-5)


def _basic_block(W: _Weights, x: Tensor, p: str, stride: int, dilation: int) -> Tensor:
    out = F.relu(W.bn(W.conv(x, f"{p}.conv1", stride, 1), f"{p}.bn1"))
    out = W.bn(W.conv(out, f"{p}.conv2", 1, dilation, dilation), f"{p}.bn2")  # variant D dilates conv2
    if f"{p}.downsample.0.weight" in W.w:
        x = W.bn(W.conv(x, f"{p}.downsample.0", stride), f"{p}.downsample.1")
    return F.relu(out + x)


def _bottleneck(W: _Weights, x: Tensor, p: str, stride: int, dilation: int) -> Tensor:
    out = F.relu(W.bn(W.conv(x, f"{p}.conv1"), f"{p}.bn1"))
    out = F.relu(W.bn(W.conv(out, f"{p}.conv2", stride, dilation, dilation), f"{p}.bn2"))  # stride on the 3x3
    out = W.bn(W.conv(out, f"{p}.conv3"), f"{p}.bn3")
    if f"{p}.downsample.0.weight" in W.w:
        x = W.bn(W.conv(x, f"{p}.downsample.0", stride), f"{p}.downsample.1")
    return F.relu(out + x)


def _encoder(W: _Weights, arch: str, x: Tensor) -> list[Tensor]:
    kind, spec, _, _ = ARCHS[arch]
    feats = []
    if kind == "resnet":
        block, layers = spec
        run = _basic_block if block == "basic" else _bottleneck
        x = F.relu(W.bn(W.conv(x, "layer0.0.0", 2, 1), "layer0.0.1"))
        x = F.relu(W.bn(W.conv(x, "layer0.0.3", 1, 1), "layer0.0.4"))
        x = F.relu(W.bn(W.conv(x, "layer0.0.6", 1, 1), "layer0.1"))
        x = F.max_pool2d(x, 3, 2, 1)
        for n, blocks in enumerate(layers, start=1):
            stride, dilation = (1, 1) if n == 1 else (2, {2: 1, 3: 2, 4: 4}[n])
            for b in range(blocks):
                x = run(W, x, f"layer{n}.{b}", stride if b == 0 else 1, dilation)
            feats.append(x)
        return feats
    x = F.relu(W.bn(W.conv(x, "backbone.stage1.0", 2, 1), "backbone.stage1.1"))
    x = F.relu(W.bn(W.conv(x, "backbone.stage1.3", 2, 1), "backbone.stage1.4"))
    for stage, _, blocks, stride in spec:
        for b in range(blocks):
            x = _basic_block(W, x, f"backbone.{stage}.{b}", stride if b == 0 else 1, 1)
        if stage in DF_OUTPUTS[arch]:
            feats.append(x)
    return feats


def _fam(W: _Weights, low: Tensor, high: Tensor, p: str, align_corners: bool) -> Tensor:
    """AlignedModule: predict a flow on low's grid, sample the ORIGINAL high with it."""
    h, w = low.shape[-2:]
    low_c = W.conv(low, f"{p}.down_l")
    high_c = F.interpolate(W.conv(high, f"{p}.down_h"), size=(h, w), mode="bilinear", align_corners=True)
    flow = W.conv(torch.cat([high_c, low_c], 1), f"{p}.flow_make", 1, 1)
    ys = torch.linspace(-1.0, 1.0, h)
    xs = torch.linspace(-1.0, 1.0, w)
    identity = torch.stack((xs.view(1, w).expand(h, w), ys.view(h, 1).expand(h, w)), dim=-1)
    grid = identity.unsqueeze(0) + flow.permute(0, 2, 3, 1) / torch.tensor([w, h], dtype=flow.dtype)
    return F.grid_sample(high, grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners)


def _head(W: _Weights, feats: list[Tensor], dsn: bool, align_corners: bool) -> tuple[Tensor, list[Tensor]]:
    top = feats[-1]
    size = top.shape[-2:]
    priors = []
    for i, bins in enumerate((1, 2, 3, 6)):  # PSPModule stage: pool, 1x1 conv, BN; no ReLU
        prior = W.bn(W.conv(F.adaptive_avg_pool2d(top, bins), f"head.ppm.stages.{i}.1"), f"head.ppm.stages.{i}.2")
        priors.append(F.interpolate(prior, size=size, mode="bilinear", align_corners=True))
    psp = F.relu(W.bn(W.conv(torch.cat(priors + [top], 1), "head.ppm.bottleneck.0"), "head.ppm.bottleneck.1"))
    f = psp
    pyramid = [psp]
    dsn_out = []
    for i in reversed(range(len(feats) - 1)):
        lateral = F.relu(W.bn(W.conv(feats[i], f"head.fpn_in.{i}.0"), f"head.fpn_in.{i}.1"))
        f = lateral + _fam(W, lateral, f, f"head.fpn_out_align.{i}", align_corners)
        pyramid.append(F.relu(W.bn(W.conv(f, f"head.fpn_out.{i}.0.0", 1, 1), f"head.fpn_out.{i}.0.1")))
        if dsn:
            d = F.relu(W.bn(W.conv(f, f"head.dsn.{i}.0", 1, 1), f"head.dsn.{i}.1"))
            dsn_out.append(W.conv(d, f"head.dsn.{i}.4"))  # Dropout2d between: identity in eval
    pyramid.reverse()
    fine = pyramid[0].shape[-2:]
    fused = [pyramid[0]] + [F.interpolate(t, size=fine, mode="bilinear", align_corners=True) for t in pyramid[1:]]
    x = F.relu(W.bn(W.conv(torch.cat(fused, 1), "head.conv_last.0.0", 1, 1), "head.conv_last.0.1"))
    return W.conv(x, "head.conv_last.1"), dsn_out


@torch.no_grad()
def released_forward(state: dict[str, Tensor], arch: str, x: Tensor, align_corners: bool = True,
                     _calibrate: bool = False, _generator: torch.Generator | None = None
                     ) -> tuple[Tensor, list[Tensor]]:
    """Eval-mode forward of the released network ``arch`` over ``state`` (released names).

    Returns the logits bilinearly resized to the input (``align_corners=True``, mynn.Upsample)
    and the dsn heads' outputs (at their own grid, coarse to fine; empty without dsn).
    """
    W = _Weights(state, _calibrate, _generator)
    dsn = any(k.startswith("head.dsn.") for k in state)
    logits, dsn_out = _head(W, _encoder(W, arch, x), dsn, align_corners)
    return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=True), dsn_out


def random_released_weights(table: dict[str, Shape], arch: str, seed: int = 0, size: tuple[int, int] = (96, 128),
                            flow_gain: float = 3.0) -> dict[str, Tensor]:
    """Random float32 weights for ``table``: He-scaled convs (FAM flow convs ``flow_gain`` times
    more, for flows of a few pixels), conv biases N(0, 0.5), BN affine ~ U(0.5, 1.5) / N(0, 0.2),
    running statistics measured on a random image batch of ``size`` (then perturbed)."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, Tensor] = {}
    for key, shape in table.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000, dtype=torch.long)
        elif key.endswith("running_mean"):
            state[key] = torch.zeros(shape)
        elif key.endswith("running_var"):
            state[key] = torch.ones(shape)
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            gain = flow_gain if key.endswith("flow_make.weight") else 1.0
            state[key] = torch.randn(shape, generator=gen) * (gain * (2.0 / fan_in) ** 0.5)
        elif key.endswith("bias") and f"{key[:-4]}running_mean" in table:  # BN shift
            state[key] = 0.2 * torch.randn(shape, generator=gen)
        elif key.endswith("bias"):  # conv bias
            state[key] = 0.5 * torch.randn(shape, generator=gen)
        else:  # BN scale
            state[key] = 0.5 + torch.rand(shape, generator=gen)
    images = torch.randn(2, 3, *size, generator=gen)
    released_forward(state, arch, images, True, _calibrate=True, _generator=gen)
    return state
