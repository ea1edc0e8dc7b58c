"""Launch sfnet_node: ``ros2 launch sfnet_ros sfnet.launch.py checkpoint:=/path/model.pt``.

Arguments:
  checkpoint   path of the .pt checkpoint (required to get past configure)
  image_topic  camera topic the node's ``image`` input is remapped to (default /camera/image_raw;
               with transport compressed the node subscribes <image_topic>/compressed)
  params_file  parameter file (default: this package's config/sfnet.yaml)
  namespace    namespace of the node and of its relative output topics (default: none)
  device       auto | cpu | cuda | cuda:N (overrides the params file)

The command line this amounts to (what the tests run, since launch is not installable there)::

  sfnet_node --ros-args -r __node:=sfnet_node -r __ns:=/<namespace> \
      --params-file <params_file> -p checkpoint:=<checkpoint> -p device:=<device> \
      -r image:=<image_topic>

For several cameras set ``cameras: [front, left]`` in the params file and remap each
``<camera>/image`` instead (e.g. ``front/image:=/cam_front/image_raw``).
The node is a lifecycle node that activates itself (``autostart: true``); with ``autostart:
false`` drive it with a lifecycle manager or ``ros2 lifecycle set /<ns>/sfnet_node configure``.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode


def generate_launch_description() -> LaunchDescription:
    default_params = os.path.join(get_package_share_directory("sfnet_ros"), "config", "sfnet.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("checkpoint", default_value="",
                              description="Path of the SFNet checkpoint (.pt)"),
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw",
                              description="Camera image topic (the node's 'image' input is remapped to it)"),
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="Node parameter file (config/sfnet.yaml)"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="Namespace of the node and its output topics"),
        DeclareLaunchArgument("device", default_value="auto",
                              description="Inference device: auto, cpu, cuda or cuda:N"),
        LifecycleNode(
            package="sfnet_ros",
            executable="sfnet_node",
            name="sfnet_node",
            namespace=LaunchConfiguration("namespace"),
            parameters=[
                LaunchConfiguration("params_file"),
                {"checkpoint": LaunchConfiguration("checkpoint"), "device": LaunchConfiguration("device")},
            ],
            remappings=[("image", LaunchConfiguration("image_topic"))],
            output="screen",
            emulate_tty=True,
        ),
    ])
