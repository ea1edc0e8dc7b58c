"""What every node benchmark needs: frames, a checkpoint, the node process, waiting."""
from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from sfnet_ros.launch_support import fastdds_profile_environment, node_launch
from sfnet_ros.transport_profile import PROFILE_VARIABLES, SWITCH_VARIABLE

REPO_ROOT = Path(__file__).resolve().parents[2]
PARAMS_FILE = REPO_ROOT / "config" / "sfnet.yaml"
FASTDDS_PROFILE = REPO_ROOT / "config" / "fastdds_large_frames.xml"


def distinct_names(text: str, choices: Collection[str]) -> list[str]:
    """``a,b`` -> ["a", "b"]: a comma list of distinct names from ``choices`` (argparse type)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in choices]
    if unknown or not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected distinct names from {', '.join(choices)}, got {text!r}")
    return names


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def bench_frames(count: int, height: int, width: int) -> list[np.ndarray]:
    """``count`` (H, W, 3) uint8 RGB frames with structure, different from each other, seeded."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    frames = []
    for i in range(count):
        base = np.stack([(x // 4 + 40 * i) % 256, (y // 3) % 256, ((x + y) // 5) % 256], axis=-1)
        frames.append(((base + rng.integers(0, 30, size=base.shape)) % 256).astype(np.uint8))
    return frames


def write_checkpoint(path: Path) -> Path:
    """A random-weight 19-class sfnet_resnet18 checkpoint (seed 0)."""
    import torch  # lazy: torch, not needed for --help or a bad argument

    from sfnet_core.checkpoint import save_checkpoint  # lazy: torch (as above)
    from sfnet_core.data.classes import ClassTable
    from sfnet_core.models import build_model  # lazy: torch (as above)

    torch.manual_seed(0)
    model = build_model("sfnet_resnet18", 19)
    classes = ClassTable.from_yaml(REPO_ROOT / "config" / "classes" / "cityscapes.yaml")
    save_checkpoint(path, model, "sfnet_resnet18", classes)
    return path


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.005)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def profile_environment(base: Mapping[str, str], profile: str) -> dict[str, str]:
    """``base`` with the Fast DDS profile variables set as the launch file sets them (``auto``:
    this checkout's profile unless ``base`` names one; a path: that file), removed and the
    processes' own application switched off (``none``: Fast DDS's defaults), or removed with the
    switch left unset (``shell``: a shell that never heard of the profile; every process of the
    package then applies it itself, sfnet_ros.transport_profile)."""
    env = dict(base)
    if profile in ("none", "shell"):
        for name in (*PROFILE_VARIABLES, SWITCH_VARIABLE):
            env.pop(name, None)
        if profile == "none":
            env[SWITCH_VARIABLE] = "off"
        return env
    env.update(fastdds_profile_environment(profile, env, FASTDDS_PROFILE, env.get("ROS_DISTRO")))
    return env


def node_argv(model: Path, device: str, namespace: str, parameters: Mapping[str, Any] | None = None,
              image_topic: str | None = "/camera/image_raw") -> list[str]:
    """The command line launch/sfnet.launch.py amounts to for one camera on ``image_topic`` (None:
    no remapping, the node's own ``<namespace>/image``); the environment is the caller's."""
    return node_launch({"checkpoint": str(model), "device": device, **(parameters or {})}, params_file=PARAMS_FILE,
                       image_topic=image_topic, namespace=namespace).argv()


def start_node(argv: list[str], log_path: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """The node in a session of its own, stdout + stderr into ``log_path``."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(argv, cwd=REPO_ROOT, env=None if env is None else dict(env), stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def wait_active(node: subprocess.Popen, log_path: Path, timeout: float, what: str = "the node") -> None:
    """Wait for the node's "active:" log line; RuntimeError with its log if it exits first."""
    wait_for(lambda: "active:" in log_path.read_text() or node.poll() is not None, timeout, f"{what} to activate")
    if node.poll() is not None:
        raise RuntimeError(f"{what} exited:\n{log_path.read_text()}")


def stop_node(node: subprocess.Popen, timeout: float = 30.0) -> int | None:
    """SIGINT, then SIGKILL after ``timeout`` s; the exit code of the SIGINT stop, None if killed."""
    if node.poll() is not None:
        return node.returncode
    node.send_signal(signal.SIGINT)
    try:
        return node.wait(timeout)
    except subprocess.TimeoutExpired:
        node.kill()
        node.wait(10)
        return None


class BareSegmenter:
    """A ``Segmenter`` loaded, warmed up and timed in one worker thread of this process, as the
    node runs it in its inference thread (on a busy CPU, PyTorch's intra-op pool behaves very
    differently when driven from the main thread, which would skew the comparison). ``load``
    runs in that thread and returns the warmed-up Segmenter (thread setup included)."""

    def __init__(self, load: Callable[[], Any]) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bare_segmenter")
        self.segmenter = self._pool.submit(load).result()

    def run(self, frame: np.ndarray) -> tuple[float, Any]:
        """(ms, result) of one ``segment`` call (a CUDA device synchronised before the clock stops)."""
        return self._pool.submit(self._timed, frame).result()

    def _timed(self, frame: np.ndarray) -> tuple[float, Any]:
        start = time.perf_counter()
        result = self.segmenter.segment(frame)
        if self.segmenter.device.type == "cuda":
            import torch  # lazy: loaded by the Segmenter by now

            torch.cuda.synchronize()
        return (time.perf_counter() - start) * 1e3, result

    def close(self) -> None:
        self._pool.submit(self._release).result()
        self._pool.shutdown()

    def _release(self) -> None:
        self.segmenter = None  # freed in its own thread (the GPU context lives there)


def spin_in_thread(executor: Any) -> None:
    """Spin an rclpy executor in a daemon thread until its context shuts down."""
    def spin() -> None:
        with contextlib.suppress(Exception):  # ends with the context
            executor.spin()

    threading.Thread(target=spin, daemon=True).start()
