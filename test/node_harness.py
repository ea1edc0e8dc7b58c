"""Run ``sfnet_node`` as its own process and talk to it over real DDS, for tests and tools.

The node is started exactly as ``launch/sfnet.launch.py`` starts it (the launch system cannot be
installed here), by the same builder, ``sfnet_ros.launch_support.node_launch``: ``python -m
sfnet_ros.node --ros-args --params-file config/sfnet.yaml -p checkpoint:=... -r
image:=/camera/image_raw -r __ns:=/ns``, with the launch file's Fast DDS profile variables. The
test process holds the other end: publishers of camera frames, subscribers of the outputs,
lifecycle and parameter clients.

Typical use (``ros_domain`` is the fixture of ``test/conftest.py``; pass its env to the node)::

    ckpt = write_test_checkpoint(tmp_path / "model.pt")
    with NodeProcess(ros_domain, tmp_path, parameters={"checkpoint": str(ckpt)},
                     remaps={"image": "/camera/image_raw"}, namespace="/veh") as node, \\
            RosClient() as ros:
        node.wait_for_log("active:")
        labels = ros.collect(Image, "/veh/segmentation/labels")
        pub = ros.publisher(Image, "/camera/image_raw")
        ros.wait_for_subscribers(pub)
        pub.publish(make_image(rgb, "rgb8", stamp_ns=1))
        msg = labels.wait_for_stamp(1)

Everything waits by polling with a deadline (no blind sleeps) and raises ``TimeoutError``
saying what it waited for; ``NodeProcess`` always stops its process (SIGINT, then SIGKILL), and
then removes the Fast DDS shared-memory segments nobody holds any more (``clean_shm_segments``, the
rule of ``fastdds shm clean``): a node ended by SIGKILL (or any process ended without destroying
its participant) leaves them in /dev/shm, about 70 MB each with the large-frames profile.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sfnet_core.data.classes import ClassTable
from sfnet_ros.conversions import image_to_numpy, numpy_to_image
from sfnet_ros.launch_support import AUTO_PROFILE, NodeLaunch, node_launch

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PARAMS_FILE = REPO_ROOT / "config" / "sfnet.yaml"
NODE_NAME = "sfnet_node"
#: The Fast DDS profile launch/sfnet.launch.py applies (fastdds_profile:=auto), from the checkout.
FASTDDS_PROFILE = REPO_ROOT / "config" / "fastdds_large_frames.xml"


def launch_environment(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` plus what the launch file sets for the node: the Fast DDS profile variable(s), unless
    ``env`` already names a profile (same rule, ``sfnet_ros.launch_support``)."""
    launch = node_launch(fastdds_profile=AUTO_PROFILE, environ=env, default_profile=FASTDDS_PROFILE)
    return launch.process_environment(env)


#: Where Fast DDS keeps its shared-memory segments and ports on Linux.
SHM_DIR = Path("/dev/shm")
#: The lock file of a Fast DDS segment or port (Fast DDS 2 names them fastrtps_*, 3 fastdds_*): its
#: owner holds an flock on it while alive (``fastdds shm clean`` reads liveness the same way).
_SHM_LOCK_FILE = re.compile(r"^(fastdds|fastrtps)_(port\d{1,5}|[0-9a-z]{16})_(el|sl)$")
#: A lock file younger than this is left alone: its creator may not have locked it yet.
SHM_MIN_AGE_S = 2.0

#: Generous: DDS discovery and model loading are slow on a loaded 2-core machine.
DISCOVERY_TIMEOUT_S = 60.0
START_TIMEOUT_S = 120.0


# -- the node process ----------------------------------------------------------------------------


class NodeProcess:
    """``sfnet_node`` in a child process, its stdout+stderr in ``<log_dir>/<name>.log``.

    Use as a context manager (or call ``stop`` in a ``finally``): the process never outlives it.
    ``fqn`` is the node's fully qualified name, e.g. ``/veh/sfnet_node``. The environment is the
    launch file's (``launch_environment``) unless ``launch_env=False``.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        log_dir: str | os.PathLike,
        params_file: str | os.PathLike | None = DEFAULT_PARAMS_FILE,
        parameters: Mapping[str, Any] | None = None,
        remaps: Mapping[str, str] | None = None,
        namespace: str | None = None,
        node_name: str | None = None,
        log_name: str = "node",
        launch_env: bool = True,
    ) -> None:
        # The node's own behaviour is tested on PyTorch, which loads in a second, on every CPU:
        # ``backend: auto`` makes a .pt an OpenVINO bf16 model on a CPU with native bf16 (an ONNX
        # export and a compile, seconds per node start). auto in the node: test_openvino.py.
        if parameters is not None and "backend" not in parameters and \
                str(parameters.get("checkpoint", "")).endswith(".pt"):
            parameters = {**parameters, "backend": "torch"}
        # launch_env=False: ``env`` exactly, as a user starting ``sfnet_node --ros-args ...`` from a
        # shell (no launch file setting the Fast DDS profile variables)
        self.launch: NodeLaunch = node_launch(
            parameters, params_file=params_file, remaps=remaps or {}, namespace=namespace, node_name=node_name,
            fastdds_profile=AUTO_PROFILE if launch_env else None, environ=env, default_profile=FASTDDS_PROFILE)
        self.command = self.launch.argv()
        self.env = self.launch.process_environment(env)
        self.log_path = Path(log_dir) / f"{log_name}.log"
        ns = "/" + (namespace or "").strip("/")
        self.fqn = ns.rstrip("/") + "/" + (node_name or NODE_NAME)
        self.process: subprocess.Popen | None = None
        self._log_file: Any = None

    def start(self) -> NodeProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed by stop()
        # A session of its own: a Ctrl-C in the terminal running pytest reaches only pytest, and
        # the fixture decides how the node is stopped.
        self.process = subprocess.Popen(
            self.command, env=self.env, cwd=REPO_ROOT, stdout=self._log_file, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        """Everything the node printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, text: str, timeout: float = START_TIMEOUT_S, count: int = 1) -> str:
        """Wait until ``text`` appears ``count`` times in the log; returns the log."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log()
            if log.count(text) >= count:
                return log
            if not self.running():
                raise RuntimeError(f"node exited (code {self.process.poll()}) before logging {text!r}:\n{log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"node did not log {text!r} within {timeout:.0f} s:\n{log}")
            time.sleep(0.1)

    def send_signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int | None:
        """Exit code, or None if still running after ``timeout`` s."""
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> int | None:
        """Signal, wait, and SIGKILL if needed; returns the exit code of the signal's own stop
        (None when it had to be killed). Safe to call twice or on a process that never started."""
        code: int | None = None
        try:
            if self.process is not None:
                if self.process.poll() is None:
                    self.process.send_signal(sig)
                    code = self.wait(timeout)
                else:
                    code = self.process.returncode
        finally:
            if self.process is not None and self.process.poll() is None:
                self.process.kill()
                self.process.wait(10)
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None
            if self.process is not None and self.process.poll() is not None:
                # A node ended by SIGKILL or os._exit leaves its Fast DDS segments behind (about
                # 70 MB each with the large-frames profile); /dev/shm is RAM.
                clean_shm_segments()
        return code

    def shm_files(self) -> list[Path]:
        """The Fast DDS shared-memory files whose lock this (running) process holds: its
        segments and ports, each with its ``_el`` lock file."""
        return shm_files_locked_by(self.pid)


# -- Fast DDS shared memory ----------------------------------------------------------------------


def _shm_companions(lock_file: Path) -> list[Path]:
    """The files of the segment or port ``lock_file`` (``<name>_el``) belongs to, lock file last."""
    name = lock_file.name[:-3]
    files = [lock_file.with_name(name)]
    if "_port" in name:
        files.append(lock_file.with_name(f"sem.{name}_mutex"))
    return [*files, lock_file]


def shm_files_locked_by(pid: int, shm_dir: Path = SHM_DIR) -> list[Path]:
    """Fast DDS segment/port files (and their lock files) whose lock process ``pid`` holds,
    read from /proc/locks (FLOCK entries name the pid and the lock file's device:inode)."""
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    inodes = set()
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 00:1a:5678 0 EOF" (a blocked waiter has "->" first)
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[4] == str(pid):
            inodes.add(int(fields[5].rsplit(":", 1)[1]))
    held: list[Path] = []
    for lock_file in sorted(shm_dir.glob("*_[es]l")):
        if not _SHM_LOCK_FILE.match(lock_file.name):
            continue
        try:
            if lock_file.stat().st_ino in inodes:
                held += [f for f in _shm_companions(lock_file) if f.exists()]
        except FileNotFoundError:
            continue
    return held


def clean_shm_segments(shm_dir: Path = SHM_DIR, min_age_s: float = SHM_MIN_AGE_S) -> list[Path]:
    """Remove the Fast DDS segments and ports nobody holds (what ``fastdds shm clean`` does):
    for each lock file, take its flock without blocking; if that succeeds no live process has
    the segment open, so the segment, its lock file (and a port's ``sem.*_mutex``) are removed
    while the lock is held. Lock files younger than ``min_age_s`` are skipped (a participant
    creates the file, then locks it). Returns the removed files."""
    removed: list[Path] = []
    now = time.time()
    for lock_file in sorted(shm_dir.glob("*_[es]l")):
        if not _SHM_LOCK_FILE.match(lock_file.name):
            continue
        try:
            if now - lock_file.stat().st_ctime < min_age_s:
                continue
            fd = os.open(lock_file, os.O_RDONLY)  # never O_CREAT: a vanished file stays vanished
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # held: a live participant uses it
            for path in _shm_companions(lock_file):
                try:
                    path.unlink()
                    removed.append(path)
                except FileNotFoundError:
                    pass
                except OSError:
                    break  # not ours to remove (permissions): leave the rest as it is
        finally:
            os.close(fd)
    return removed


# -- checkpoints and images ----------------------------------------------------------------------


def write_test_checkpoint(path: str | os.PathLike, seed: int = 0, model_name: str = "sfnet_resnet18") -> Path:
    """A random-weight 19-class (Cityscapes) checkpoint: deterministic for a given seed."""
    import torch

    from sfnet_core.checkpoint import save_checkpoint  # lazy: torch, for the tests that write a checkpoint only
    from sfnet_core.models import build_model  # lazy: torch (as above)

    torch.manual_seed(seed)
    model = build_model(model_name, 19)
    save_checkpoint(path, model, model_name, ClassTable.from_yaml(REPO_ROOT / "config" / "classes" / "cityscapes.yaml"))
    return Path(path)


def sample_image(height: int = 64, width: int = 128, seed: int = 0) -> np.ndarray:
    """A (H, W, 3) uint8 RGB image with structure (not plain noise), different per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 2 + seed * 17) % 256, (y * 3 + seed * 5) % 256, ((x + y) * 4) % 256], axis=-1)
    noise = rng.integers(0, 40, size=(height, width, 3))
    return ((base + noise) % 256).astype(np.uint8)



def stamp(stamp_ns: int) -> Any:
    from builtin_interfaces.msg import Time

    return Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)


def header(stamp_ns: int, frame_id: str = "camera") -> Any:
    from std_msgs.msg import Header

    return Header(stamp=stamp(stamp_ns), frame_id=frame_id)


def stamp_ns_of(msg: Any) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def make_image(array: np.ndarray, encoding: str, stamp_ns: int, frame_id: str = "camera") -> Any:
    """A well-formed sensor_msgs/Image (via sfnet_ros.conversions.numpy_to_image)."""
    return numpy_to_image(array, encoding, header=header(stamp_ns, frame_id))


def image_array(msg: Any) -> np.ndarray:
    """An output Image as an array ((H, W) for mono8, (H, W, 3) for rgb8), copied."""
    return np.array(image_to_numpy(msg))


# -- the test-side ROS participant ---------------------------------------------------------------


def reliable_qos(depth: int = 10, transient_local: bool = False) -> Any:
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if transient_local else DurabilityPolicy.VOLATILE)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, poll: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


class Collector:
    """Every message received on one topic, in arrival order (filled by the spin thread)."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._lock = threading.Lock()
        self._messages: list[Any] = []
        self.subscription: Any = None

    def _on_message(self, msg: Any) -> None:
        with self._lock:
            self._messages.append(msg)

    @property
    def messages(self) -> list[Any]:
        with self._lock:
            return list(self._messages)

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()

    def wait_for(self, predicate: Callable[[Any], bool] = lambda m: True,
                 timeout: float = DISCOVERY_TIMEOUT_S) -> Any:
        """The first received message matching ``predicate`` (waiting for it if needed)."""
        def find() -> Any:
            return next((m for m in self.messages if predicate(m)), None)
        return wait_until(find, timeout, f"a matching message on {self.topic}")

    def wait_for_stamp(self, stamp_ns: int, timeout: float = DISCOVERY_TIMEOUT_S) -> Any:
        return self.wait_for(lambda m: stamp_ns_of(m) == stamp_ns, timeout)

    def has_stamp(self, stamp_ns: int) -> bool:
        return any(stamp_ns_of(m) == stamp_ns for m in self.messages)


class RosClient:
    """An rclpy node in the test process, spun by a background thread, in its own context.

    Create it after ``ros_domain`` has set ROS_DOMAIN_ID (the context reads it at init).
    """

    def __init__(self, name: str = "sfnet_test_client") -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, name=f"{name}_spin", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        with contextlib.suppress(ExternalShutdownException, Exception):  # ends with the context
            self.executor.spin()

    def __enter__(self) -> RosClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5)
        self.node.destroy_node()
        self.context.try_shutdown()
        self._thread.join(10)

    # topics

    def publisher(self, msg_type: Any, topic: str, qos: Any = None) -> Any:
        return self.node.create_publisher(msg_type, topic, qos or reliable_qos())

    def collect(self, msg_type: Any, topic: str, qos: Any = None) -> Collector:
        collector = Collector(topic)
        collector.subscription = self.node.create_subscription(msg_type, topic, collector._on_message,
                                                               qos or reliable_qos())
        return collector

    def wait_for_subscribers(self, publisher: Any, count: int = 1, timeout: float = DISCOVERY_TIMEOUT_S) -> None:
        wait_until(lambda: publisher.get_subscription_count() >= count, timeout,
                   f"{count} subscriber(s) on {publisher.topic_name}")

    def wait_for_publishers(self, topic: str, count: int = 1, timeout: float = DISCOVERY_TIMEOUT_S) -> None:
        wait_until(lambda: self.node.count_publishers(topic) >= count, timeout, f"{count} publisher(s) on {topic}")

    # services

    def call(self, srv_type: Any, name: str, request: Any, timeout: float = DISCOVERY_TIMEOUT_S,
             resend_every: float | None = 10.0) -> Any:
        """Call a service and return its response (TimeoutError if unavailable or unanswered).

        ``resend_every``: a request sent right after discovery can be lost while the reply path
        is still being matched (a known DDS race, common on a loaded machine); idempotent calls
        are sent again after this many seconds without an answer. None = send once.
        """
        client = self.node.create_client(srv_type, name)
        try:
            deadline = time.monotonic() + timeout
            wait_until(client.service_is_ready, timeout, f"service {name}")
            while True:
                future = client.call_async(request)
                remaining = deadline - time.monotonic()
                attempt = remaining if resend_every is None else min(resend_every, remaining)
                try:
                    wait_until(future.done, max(attempt, 0.1), f"the response of {name}")
                    return future.result()
                except TimeoutError:
                    if time.monotonic() >= deadline or resend_every is None:
                        raise
                    client.remove_pending_request(future)
        finally:
            self.node.destroy_client(client)

    def get_state(self, node_fqn: str, timeout: float = DISCOVERY_TIMEOUT_S) -> str:
        """The lifecycle state label of ``node_fqn`` (unconfigured, inactive, active, ...)."""
        from lifecycle_msgs.srv import GetState

        return self.call(GetState, f"{node_fqn}/get_state", GetState.Request(), timeout).current_state.label

    def change_state(self, node_fqn: str, transition_id: int, timeout: float = START_TIMEOUT_S) -> bool:
        """Trigger a lifecycle transition (lifecycle_msgs/Transition.TRANSITION_*); its success."""
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        request = ChangeState.Request(transition=Transition(id=transition_id))
        # Not idempotent (a repeated configure fails), so sent once.
        return bool(self.call(ChangeState, f"{node_fqn}/change_state", request, timeout, resend_every=None).success)

    def set_parameters(self, node_fqn: str, values: Mapping[str, Any],
                       timeout: float = DISCOVERY_TIMEOUT_S) -> list[Any]:
        """Set parameters through ``<node>/set_parameters``; one SetParametersResult per value."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        request = SetParameters.Request(
            parameters=[Parameter(name, value=value).to_parameter_msg() for name, value in values.items()])
        return list(self.call(SetParameters, f"{node_fqn}/set_parameters", request, timeout).results)

    def describe_parameters(self, node_fqn: str, names: Sequence[str],
                            timeout: float = DISCOVERY_TIMEOUT_S) -> list[Any]:
        from rcl_interfaces.srv import DescribeParameters

        request = DescribeParameters.Request(names=list(names))
        return list(self.call(DescribeParameters, f"{node_fqn}/describe_parameters", request, timeout).descriptors)


# -- diagnostics ---------------------------------------------------------------------------------


def diagnostic_values(array_msg: Any, name_contains: str) -> dict[str, str] | None:
    """Key/values of the first status whose name contains ``name_contains`` (None if absent)."""
    for status in array_msg.status:
        if name_contains in status.name:
            level = status.level[0] if isinstance(status.level, bytes) else int(status.level)
            return {kv.key: kv.value for kv in status.values} | {"_level": str(level), "_message": status.message}
    return None


def processes_on_domain(domain: str, markers: Sequence[str] = ("sfnet_ros.node",)) -> list[str]:
    """Command lines of processes still running on ROS domain ``domain`` whose command line holds
    one of ``markers`` (read from /proc): what a test asserts is empty once it is done."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(marker in cmdline for marker in markers) and f"ROS_DOMAIN_ID={domain}".encode() in environ:
            found.append(f"{entry.name}: {cmdline}")
    return found


class ScriptedProcess:
    """A helper process running a Python ``script`` (e.g. a camera publishing frames on request):
    commands go to its stdin one line each, its answers are read from stdout by a thread so that
    every wait has a deadline (``expect``), its stderr goes to ``log_path``. Use as a context
    manager (or call ``close``): the process never outlives it."""

    def __init__(self, script: str, args: Sequence[str], env: Mapping[str, str], log_path: Path,
                 ready_timeout: float = 180.0) -> None:
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed by close(), the process writes to it
        self.process = subprocess.Popen([sys.executable, "-c", script, *map(str, args)], env=dict(env),
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                        text=True, bufsize=1, start_new_session=True)
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self._lines.put(line) for line in self.process.stdout], daemon=True).start()
        self.expect("ready", ready_timeout)

    def expect(self, word: str, timeout: float) -> list[str]:
        """The words after ``word`` of the next line the process prints (RuntimeError, with its log,
        when another line or nothing comes within ``timeout``)."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            line = ""
        if not line.startswith(word):
            self.close()
            raise RuntimeError(f"helper process said {line!r} instead of {word!r} within {timeout:.0f} s:\n"
                               f"{self.log_path.read_text(errors='replace')[-3000:]}")
        return line.split()[1:]

    def send(self, line: str) -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def __enter__(self) -> ScriptedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()


def write_label_id_bag(source: Path, out: Path) -> Path:
    """``source`` again with its labels turned from Cityscapes train ids into label ids (labelIds,
    e.g. road 0 -> 7; ignore -> 0 "unlabeled"): what a team's ground truth may hold."""
    from sfnet_ros.conversions import numpy_to_image
    from sfnet_ros.tools.bag_io import IMAGE, BagReader, BagWriter, decode_labels, ros2_class

    table = ClassTable.from_yaml(REPO_ROOT / "config" / "classes" / "cityscapes.yaml")
    label_id = np.zeros(256, np.uint8)
    for raw, train in sorted(table.id_map.items(), reverse=True):  # the smallest label id of each train id
        label_id[train] = raw
    with BagReader(source) as reader, BagWriter(out) as writer:
        for topic, msgtype, timestamp, cdr, msg in reader.decoded_cdr_messages():
            if topic.endswith("labels"):
                raw = label_id[decode_labels(msg, msgtype, topic)]
                writer.write(topic, timestamp, numpy_to_image(raw, "mono8", header=msg.header,
                                                              msg_cls=ros2_class(IMAGE)))
            else:
                writer.write_raw(topic, msgtype, timestamp, cdr)
    return out
