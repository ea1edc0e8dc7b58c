"""SFNet models: ``build_model(name, num_classes, ...)`` and ``MODEL_VARIANTS``.

Modules: ``backbones`` (ResNet deep stem, ShuffleNetV2), ``dfnet`` (DF1/DF2),
``flow_alignment`` (FAM), ``heads`` (PPM, aligned FPN decoder, FCN/aux heads),
``pretrained`` (local ImageNet weights, safe reading of weight files), ``released`` (the
authors' released checkpoints: variant detection, import to these names, export back),
``sfnet`` (the model and its variants).
"""
from __future__ import annotations

from .flow_alignment import FlowAlignmentModule, flow_warp
from .pretrained import BackboneLoadReport, PretrainedWeightsError, load_backbone_weights, read_weights_file
from .sfnet import MODEL_VARIANTS, SFNet, build_model, variant_options

__all__ = ["build_model", "MODEL_VARIANTS", "SFNet", "variant_options", "FlowAlignmentModule",
           "flow_warp", "PretrainedWeightsError", "BackboneLoadReport", "load_backbone_weights",
           "read_weights_file"]
