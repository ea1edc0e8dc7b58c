"""ROS 2 layer over sfnet_core: the segmentation node, image conversions and bag tools."""
