"""``python -m sfnet_ros.node --ros-args ...`` = the ``sfnet_node`` executable."""
import sys

from sfnet_ros.node.main import main

sys.exit(main())
