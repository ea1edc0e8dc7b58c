#!/usr/bin/env python3
"""Entry script for a source checkout: same as the ``sfnet-eval`` console script.

    python training/evaluate.py --config training/configs/cityscapes_sfnet_r18.yaml \
        --checkpoint runs/r18/best.pt --mode msf --json runs/r18/eval_msf.json
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sfnet_core.cli.evaluate_command import main

if __name__ == "__main__":
    sys.exit(main())
