"""ROS 2 layer over sfnet_core.

``node/``         the segmentation node (``sfnet_node``)
``tools/``        bag and command-line tools (sfnet-bag-eval, -play, -record, -live-eval, -extract, -demo)
``conversions``   sensor_msgs Image / CompressedImage <-> numpy, shared by the node and the tools
"""
