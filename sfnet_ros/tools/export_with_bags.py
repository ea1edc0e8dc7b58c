"""``sfnet-export`` with bags: the core command (``sfnet_core.cli.export_command``) plus this
package's bag reader for ``--int8 --calibration BAG`` (sfnet_core never imports the ROS layer)."""
from __future__ import annotations

import sys

from sfnet_core.cli import export_command
from sfnet_ros.tools.bag_io import sample_frames

build_parser = export_command.build_parser  # the same options; --help and tests read them here


def main(argv: list[str] | None = None) -> int:
    return export_command.main(argv, bag_frames=sample_frames)


if __name__ == "__main__":
    sys.exit(main())
