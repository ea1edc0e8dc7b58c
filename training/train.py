#!/usr/bin/env python3
"""Entry script for ``torchrun`` (which needs a file): same as the ``sfnet-train`` console script.

    torchrun --standalone --nproc_per_node 8 training/train.py \
        --config training/configs/cityscapes_sfnet_r18.yaml --out runs/r18
"""
import sys
from pathlib import Path

# Running from a source checkout without installing: make ``sfnet_core`` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sfnet_core.cli.train_command import main

if __name__ == "__main__":
    sys.exit(main())
