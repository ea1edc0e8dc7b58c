"""sfnet_node as a managed node: driven through the lifecycle services, and failing configure
cleanly (one clear log line, no traceback, the process stays up, unconfigured) on a missing or
corrupt checkpoint, an unknown mask class or an invalid parameter value."""
from __future__ import annotations

import shutil
import signal

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from node_harness import (
    NodeProcess,
    RosClient,
    diagnostic_values,
    image_array,
    make_image,
    sample_image,
    stamp_ns_of,
    wait_until,
    write_test_checkpoint,
)
from sensor_msgs.msg import Image

H, W = 64, 128
NS = "/managed"


@pytest.fixture(scope="module")
def env(ros_domain_module):
    return ros_domain_module


@pytest.fixture(scope="module")
def ros(env):
    with RosClient() as client:
        yield client


def _transition(ros: RosClient, node: NodeProcess, transition: int) -> bool:
    return ros.change_state(node.fqn, transition)


@pytest.mark.ros_api
def test_lifecycle_transitions_and_configure_retries(env, ros, checkpoint, tmp_path):
    missing = tmp_path / "not_there.pt"
    process = NodeProcess(env, tmp_path, namespace=NS, parameters={
        "checkpoint": str(missing), "autostart": False, "device": "cpu", "qos_reliability": "reliable"})
    with process:
        # Without autostart the node waits, unconfigured, subscribing to nothing.
        assert ros.get_state(process.fqn) == "unconfigured"
        assert ros.node.count_subscribers(f"{NS}/image") == 0

        # A missing checkpoint: configure fails with one line naming the parameter and the file.
        assert not _transition(ros, process, Transition.TRANSITION_CONFIGURE)
        assert ros.get_state(process.fqn) == "unconfigured"
        log = process.wait_for_log(f"configure failed: parameter 'checkpoint': file not found: {missing}")

        # Configure-time parameters may be changed while unconfigured; an unknown mask class
        # fails configure listing the valid names.
        results = ros.set_parameters(process.fqn, {"checkpoint": str(checkpoint), "mask_classes": ["flying saucer"]})
        assert all(r.successful for r in results)
        assert not _transition(ros, process, Transition.TRANSITION_CONFIGURE)
        log = process.wait_for_log("configure failed: parameter 'mask_classes': unknown class name 'flying saucer'")
        assert "valid names: road, sidewalk, building" in log

        (result,) = ros.set_parameters(process.fqn, {"mask_classes": ["road"]})
        assert result.successful
        assert _transition(ros, process, Transition.TRANSITION_CONFIGURE)
        assert ros.get_state(process.fqn) == "inactive"
        # Inactive: no subscription, no outputs yet.
        assert ros.node.count_subscribers(f"{NS}/image") == 0
        assert ros.node.count_publishers(f"{NS}/segmentation/labels") == 0

        assert _transition(ros, process, Transition.TRANSITION_ACTIVATE)
        assert ros.get_state(process.fqn) == "active"
        _check_segments(ros, stamp_base=1_000)

        # Deactivate: the subscription and every output publisher go away.
        assert _transition(ros, process, Transition.TRANSITION_DEACTIVATE)
        assert ros.get_state(process.fqn) == "inactive"
        wait_until(lambda: ros.node.count_subscribers(f"{NS}/image") == 0, 60, "the image subscription to go")
        wait_until(lambda: ros.node.count_publishers(f"{NS}/segmentation/labels") == 0
                   and ros.node.count_publishers(f"{NS}/segmentation/mask/road") == 0, 60, "the publishers to go")

        # Reactivate: outputs resume.
        assert _transition(ros, process, Transition.TRANSITION_ACTIVATE)
        _check_segments(ros, stamp_base=2_000)
        _check_skipped_without_subscribers(ros, stamp_base=3_000)

        assert _transition(ros, process, Transition.TRANSITION_DEACTIVATE)
        assert _transition(ros, process, Transition.TRANSITION_CLEANUP)
        assert ros.get_state(process.fqn) == "unconfigured"

        assert process.stop(signal.SIGINT) == 0
        log = process.log()
        assert "Traceback" not in log
        assert log.count("configure failed") == 2


def _check_segments(ros: RosClient, stamp_base: int) -> None:
    """Frames published to the active node come back as labels (and road masks)."""
    pub = ros.publisher(Image, f"{NS}/image")
    labels = ros.collect(Image, f"{NS}/segmentation/labels")
    mask = ros.collect(Image, f"{NS}/segmentation/mask/road")
    try:
        ros.wait_for_subscribers(pub)
        stamps = iter(range(stamp_base, stamp_base + 1000))

        def served() -> Image | None:
            stamp = next(stamps)
            pub.publish(make_image(sample_image(H, W, 1), "rgb8", stamp))
            try:
                labels.wait_for_stamp(stamp, timeout=20)
                return mask.wait_for_stamp(stamp, timeout=20)
            except TimeoutError:
                return None
        mask_msg = wait_until(served, 120, "labels and a road mask from the active node")
        labels_msg = labels.wait_for_stamp(stamp_ns_of(mask_msg))
        np.testing.assert_array_equal(image_array(mask_msg) == 255, image_array(labels_msg) == 0)
    finally:
        ros.node.destroy_publisher(pub)
        ros.node.destroy_subscription(labels.subscription)
        ros.node.destroy_subscription(mask.subscription)


def _check_skipped_without_subscribers(ros: RosClient, stamp_base: int) -> None:
    """With nobody subscribed to any output, frames are not run through the network at all."""
    pub = ros.publisher(Image, f"{NS}/image")
    diagnostics = ros.collect(DiagnosticArray, "/diagnostics")
    try:
        ros.wait_for_subscribers(pub)
        stamps = iter(range(stamp_base, stamp_base + 1000))

        def skipped() -> bool:
            # The node may not have noticed yet that _check_segments' subscribers are gone.
            pub.publish(make_image(sample_image(H, W, 1), "rgb8", next(stamps)))
            for msg in reversed(diagnostics.messages):
                values = diagnostic_values(msg, f"{NS}/image")
                if values is not None:
                    return int(values["skipped_no_subscribers_total"]) > 0
            return False
        wait_until(skipped, 60, "a frame skipped for lack of subscribers", poll=0.5)
    finally:
        ros.node.destroy_publisher(pub)
        ros.node.destroy_subscription(diagnostics.subscription)


@pytest.mark.parametrize("case", ["corrupt_checkpoint", "invalid_precision", "out_of_range_depth"])
def test_autostart_configure_failure_is_clean(env, ros, checkpoint, tmp_path, case):
    # A checkpoint cut short, as an interrupted copy to the vehicle leaves it.
    corrupt = tmp_path / "corrupt.pt"
    data = checkpoint.read_bytes()
    corrupt.write_bytes(data[: len(data) // 2])
    parameters: dict[str, object] = {"checkpoint": str(corrupt)}
    if case == "invalid_precision":
        parameters["precision"] = "fp8"
    if case == "out_of_range_depth":
        parameters["qos_depth"] = 0
    expected = {
        "corrupt_checkpoint": f"configure failed: {corrupt}: not a readable checkpoint",
        "invalid_precision": "configure failed: parameter 'precision': 'fp8' is not one of: auto, fp32, fp16, bf16",
        "out_of_range_depth": "configure failed: parameter 'qos_depth': invalid value",
    }[case]
    process = NodeProcess(env, tmp_path, namespace=f"{NS}_{case}", parameters=parameters)
    with process:
        log = process.wait_for_log(expected)
        # The process stays up and unconfigured (a lifecycle manager may retry), with no retry
        # loop of its own and no traceback.
        assert ros.get_state(process.fqn) == "unconfigured", process.log()
        assert process.running()
        assert process.stop(signal.SIGTERM) == 0, process.log()
        log = process.log()
        assert log.count("configure failed") == 1, log
        assert "Traceback" not in log, log


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_model_load_stops_cleanly(env, checkpoint, tmp_path, sig):
    # A large warm-up on the CPU keeps the node busy configuring when the signal arrives (it used
    # to make rclpy tear the context down under the model load, and every later call fail).
    process = NodeProcess(env, tmp_path, namespace=f"{NS}_early", parameters={
        "checkpoint": str(checkpoint), "device": "cpu", "input_size": [768, 1536]})
    with process:
        process.wait_for_log("Segmenter: device")
        # Its own Fast DDS segments (ports may be shared with this test's client).
        segments = [f for f in process.shm_files() if "_port" not in f.name]
        process.send_signal(sig)
        assert process.wait(60) == 0
        log = process.log()
        assert "stop requested (SIGINT/SIGTERM): shutting down" in log
        assert "a lifecycle transition (configure) is still running" in log, log
        assert "Traceback" not in log and "Failed" not in log, log
        # It left with os._exit, after releasing its participant: no segment left in /dev/shm
        # (checked before the harness's own clean-up in stop()).
        assert segments and not [f for f in segments if f.exists()], segments


@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")),
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_compile_parameter_serves_the_same_labels(env, ros, tmp_path):
    """``compile: true`` runs the torch.compile'd network (compiled at configure, a fixed input
    size) and publishes the labels of the eager reference. On SFNet-DF1 (FAMs included): its
    compilation takes half the time of ResNet-18's on a CPU, and the path is the same."""
    from sfnet_core.inference import Segmenter  # lazy: torch, for this test only

    checkpoint = write_test_checkpoint(tmp_path / "df1.pt", model_name="sfnet_df1")
    segmenter = Segmenter.from_checkpoint(checkpoint, device="cpu", precision="fp32", warmup=False)
    process = NodeProcess(env, tmp_path, namespace="/compiled", parameters={
        "checkpoint": str(checkpoint), "device": "cpu", "compile": True, "input_size": [H, W],
        "qos_reliability": "reliable"})
    with process:
        process.wait_for_log("active:", timeout=300)
        assert "compile True" in process.wait_for_log("Segmenter: device")
        pub = ros.publisher(Image, "/compiled/image")
        labels = ros.collect(Image, "/compiled/segmentation/labels")
        ros.wait_for_subscribers(pub)
        rgb = sample_image(H, W, 3)
        stamps = iter(range(7000, 8000))

        def served() -> Image | None:
            stamp = next(stamps)
            pub.publish(make_image(rgb, "rgb8", stamp))
            try:
                return labels.wait_for_stamp(stamp, timeout=20)
            except TimeoutError:
                return None
        got = image_array(wait_until(served, 120, "labels from the compiled network"))
        expected = segmenter.segment(rgb).labels
        assert float((got == expected).mean()) >= 0.999
