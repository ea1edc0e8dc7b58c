"""Launch sfnet_node: ``ros2 launch sfnet_ros sfnet.launch.py checkpoint:=/path/model.pt``.

Arguments (docs/launch.md has the full table and a four-camera example):
  checkpoint       path of the .pt checkpoint (required to get past configure)
  image_topic      one camera: the topic the node's ``image`` input is remapped to (default
                   /camera/image_raw; with transport compressed the node subscribes
                   <image_topic>/compressed); ``camera_info`` goes to its sibling
                   (/camera/image_raw -> /camera/camera_info)
  cameras          several cameras: comma-separated names, e.g. front,left,rear (default empty =
                   one camera); sets the node's ``cameras`` parameter
  image_topics     with cameras: one image topic per camera, same order, comma-separated; each
                   <camera>/image is remapped to its topic, <camera>/camera_info to the sibling
  params_file      parameter file (default: this package's config/sfnet.yaml)
  namespace        namespace of the node and of its relative output topics (default: none)
  device           auto | cpu | cuda | cuda:N (overrides the params file)
  fastdds_profile  auto (default: the SFNET_FASTDDS_PROFILE switch if set, else the profile already
                   exported for the whole stack, else this package's
                   config/fastdds_large_frames.xml) | none (SFNET_FASTDDS_PROFILE=off for the node)
                   | a path; the rule of sfnet_ros.transport_profile, which the node also applies
                   to itself when started without launch

The argument logic lives in ``sfnet_ros.launch_support.node_launch`` (no launch imports, so it is
tested where launch is not installed; the tests, the benchmarks and sfnet-demo start the node with
its command line). With one camera the command line this amounts to::

  FASTDDS_DEFAULT_PROFILES_FILE=<share>/config/fastdds_large_frames.xml \
  sfnet_node --ros-args -r __node:=sfnet_node -r __ns:=/<namespace> \
      --params-file <params_file> -p checkpoint:=<checkpoint> -p device:=<device> \
      -r image:=<image_topic> -r camera_info:=<sibling of image_topic>

The node is a lifecycle node that activates itself (``autostart: true``); with ``autostart:
false`` drive it with a lifecycle manager or ``ros2 lifecycle set /<ns>/sfnet_node configure``.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, GroupAction, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode

from launch import LaunchDescription
from sfnet_ros.launch_support import PROFILE_FILE_NAME, node_launch


def _launch_node(context, default_profile):
    """OpaqueFunction body: resolve the arguments into a ``NodeLaunch``, then start the node.

    A LaunchArgumentError (lists of different lengths, a missing profile file, ...) ends the
    launch with its one-line message.
    """
    def argument(name):
        return LaunchConfiguration(name).perform(context)

    # context.environment is what the node process inherits (launch >= Humble); os.environ before.
    environment = getattr(context, "environment", os.environ)
    node = node_launch(
        {"checkpoint": argument("checkpoint"), "device": argument("device")},
        params_file=argument("params_file"),
        cameras=argument("cameras"), image_topics=argument("image_topics"), image_topic=argument("image_topic"),
        namespace=argument("namespace"),
        fastdds_profile=argument("fastdds_profile"), environ=environment, default_profile=default_profile,
        ros_distro=os.environ.get("ROS_DISTRO"))
    # A scoped group: the profile variables reach this node only, not the rest of an including launch.
    return [GroupAction(scoped=True, actions=[
        *[SetEnvironmentVariable(name, value) for name, value in node.environment.items()],
        LifecycleNode(
            package="sfnet_ros",
            executable="sfnet_node",
            name="sfnet_node",
            namespace=node.namespace,
            parameters=[node.params_file, node.parameters],
            remappings=node.remappings,
            output="screen",
            emulate_tty=True,
        ),
    ])]


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("sfnet_ros")
    default_params = os.path.join(share, "config", "sfnet.yaml")
    default_profile = os.path.join(share, "config", PROFILE_FILE_NAME)
    return LaunchDescription([
        DeclareLaunchArgument("checkpoint", default_value="",
                              description="Path of the SFNet checkpoint (.pt)"),
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw",
                              description="One camera: the image topic the node's 'image' input is remapped to"),
        DeclareLaunchArgument("cameras", default_value="",
                              description="Several cameras: comma-separated names, e.g. front,left,rear "
                                          "(empty = one camera, see image_topic)"),
        DeclareLaunchArgument("image_topics", default_value="",
                              description="With cameras: one image topic per camera, same order, comma-separated"),
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="Node parameter file (config/sfnet.yaml)"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="Namespace of the node and its output topics"),
        DeclareLaunchArgument("device", default_value="auto",
                              description="Inference device: auto, cpu, cuda or cuda:N"),
        DeclareLaunchArgument("fastdds_profile", default_value="auto",
                              description="Fast DDS profile for large frames: auto (SFNET_FASTDDS_PROFILE if "
                                          "set, else an exported FASTDDS_DEFAULT_PROFILES_FILE, else "
                                          "config/fastdds_large_frames.xml), none, or a path"),
        OpaqueFunction(function=_launch_node, kwargs={"default_profile": default_profile}),
    ])
