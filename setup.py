"""ament_python package `sfnet_ros`: installs sfnet_core (PyTorch library) and sfnet_ros (ROS 2 layer).

PyTorch is deliberately not pinned here: on a vehicle the platform's own CUDA / Jetson build of
torch is used. The development setup (Makefile) pins exact versions instead.
"""
from glob import glob

from setuptools import find_packages, setup

package_name = "sfnet_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(include=["sfnet_core", "sfnet_core.*", "sfnet_ros", "sfnet_ros.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.xml")),
        ("share/" + package_name + "/config/classes", glob("config/classes/*.yaml")),
        ("share/" + package_name + "/training/configs", glob("training/configs/*.yaml")),
    ],
    python_requires=">=3.10",
    install_requires=["setuptools"],
    extras_require={
        # what a vehicle or workstation needs besides ROS 2 itself (python3-numpy etc. come
        # from rosdep): torch/torchvision matching the platform's CUDA, and the tools' extras.
        "ml": ["torch", "torchvision", "onnx", "onnxruntime", "openvino", "tensorboard", "cityscapesscripts",
               "rosbags"],
    },
    zip_safe=True,
    maintainer="sfnet_ros developers",
    maintainer_email="sfnet-ros@example.com",
    description="Real-time SFNet semantic segmentation for ROS 2 vehicle cameras",
    license="Apache-2.0",
    tests_require=["pytest"],
    # every sfnet-* script goes through sfnet_core.cli.entry.launch: signal handlers before any import
    entry_points={
        "console_scripts": [
            "sfnet_node = sfnet_ros.node.main:main",
            "sfnet-export = sfnet_ros.tools.entry:sfnet_export",
            "sfnet-train = sfnet_core.cli.entry:sfnet_train",
            "sfnet-eval = sfnet_core.cli.entry:sfnet_eval",
            "sfnet-import = sfnet_core.cli.entry:sfnet_import",
            "sfnet-synthetic = sfnet_core.cli.entry:sfnet_synthetic",
            "sfnet-bag-eval = sfnet_ros.tools.entry:sfnet_bag_eval",
            "sfnet-bag-play = sfnet_ros.tools.entry:sfnet_bag_play",
            "sfnet-bag-record = sfnet_ros.tools.entry:sfnet_bag_record",
            "sfnet-live-eval = sfnet_ros.tools.entry:sfnet_live_eval",
            "sfnet-extract = sfnet_ros.tools.entry:sfnet_extract",
            "sfnet-demo = sfnet_ros.tools.entry:sfnet_demo",
            "sfnet-status = sfnet_ros.tools.entry:sfnet_status",
            "sfnet-synthetic-bag = sfnet_ros.tools.entry:sfnet_synthetic_bag",
            "sfnet-fleet-eval = sfnet_ros.tools.entry:sfnet_fleet_eval",
            "sfnet-labels = sfnet_core.cli.entry:sfnet_labels",
            "sfnet-fleet-merge = sfnet_ros.tools.entry:sfnet_fleet_merge",
        ],
    },
)
