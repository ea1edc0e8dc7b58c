"""``python -m sfnet_ros.node --ros-args ...`` = the ``sfnet_node`` executable."""
import sys

from sfnet_ros.node.segmentation_node import main

sys.exit(main())
