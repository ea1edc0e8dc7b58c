"""The ImageNet statistics the encoders were pretrained with: the input normalisation of every
model here unless a checkpoint says otherwise (on 0..1 RGB). Plain numbers: recipes and tools
read them without importing torch."""
from __future__ import annotations

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
