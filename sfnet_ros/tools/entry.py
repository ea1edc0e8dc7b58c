"""Console-script entry points of the ROS tools: ``sfnet_core.cli.entry.launch`` (signal handlers
first, the tool's module imported only then; see there)."""
from __future__ import annotations

from sfnet_core.cli.entry import launch


def sfnet_export() -> None:
    launch("sfnet_ros.tools.export_with_bags", "sfnet-export")


def sfnet_bag_eval() -> None:
    launch("sfnet_ros.tools.bag_eval", "sfnet-bag-eval")


def sfnet_bag_play() -> None:
    launch("sfnet_ros.tools.bag_play", "sfnet-bag-play")


def sfnet_bag_record() -> None:
    launch("sfnet_ros.tools.bag_record", "sfnet-bag-record")


def sfnet_live_eval() -> None:
    launch("sfnet_ros.tools.live_eval", "sfnet-live-eval")


def sfnet_extract() -> None:
    launch("sfnet_ros.tools.extract", "sfnet-extract")


def sfnet_demo() -> None:
    launch("sfnet_ros.tools.demo", "sfnet-demo")


def sfnet_status() -> None:
    launch("sfnet_ros.tools.status", "sfnet-status")


def sfnet_synthetic_bag() -> None:
    launch("sfnet_ros.tools.synthetic_bag", "sfnet-synthetic-bag")


def sfnet_fleet_eval() -> None:
    launch("sfnet_ros.tools.fleet_eval", "sfnet-fleet-eval")


def sfnet_fleet_merge() -> None:
    launch("sfnet_ros.tools.fleet_merge", "sfnet-fleet-merge")
