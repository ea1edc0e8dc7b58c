"""``sfnet-demo`` (``make demo``): the whole pipeline on a fresh machine, nothing downloaded.

1. writes a synthetic driving bag with ground-truth labels (``sfnet_ros.tools.synthetic_bag``);
2. trains a small checkpoint with ``training/configs/synthetic_quick.yaml`` (cached under
   ``~/.cache/sfnet_ros/demo/<hash of the recipe>/``, reused on the next run);
3. evaluates it offline over the bag (``sfnet-bag-eval``: model FPS, mIoU, a segmented MCAP);
4. starts ``sfnet_node`` as a process, exactly as the launch file does, on a ROS domain of its own
   with localhost-only discovery; records its outputs (``sfnet-bag-record``) while
   ``sfnet-live-eval`` plays the bag into it: end-to-end FPS, latency, drops, mIoU;
5. writes an image strip (input | ground truth | labels | overlay | semantic flow) as PNG.
Everything it started is stopped on the way out, Ctrl-C included.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sfnet_core.cli.common import run_command
from sfnet_core.errors import SFNetError
from sfnet_core.io_utils import atomic_write
from sfnet_ros.tools.synthetic_bag import parse_size, write_synthetic_bag

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "training" / "configs" / "synthetic_quick.yaml"
PARAMS_FILE = REPO_ROOT / "config" / "sfnet.yaml"
IMAGE_TOPIC = "/front/image_raw"
LABEL_TOPIC = "/front/labels"
OUTPUTS = ["/front/segmentation/labels", "/front/segmentation/color"]
START_TIMEOUT_S = 180.0


def log(text: str) -> None:
    print(f"[sfnet-demo] {text}", file=sys.stderr, flush=True)


def checkpoint_for(config: Path, overrides: list[str], cache_dir: Path) -> Path:
    """Train ``config`` (+ overrides) once; later runs with the same recipe reuse the result."""
    from sfnet_core.training.engine import train
    from sfnet_core.training.config import load_train_config

    key = hashlib.sha256(config.read_bytes() + "\n".join(overrides).encode()).hexdigest()[:16]
    run_dir = cache_dir / key
    done = run_dir / "demo_done.json"
    if done.exists() and (run_dir / "last.pt").exists():
        log(f"reusing the checkpoint trained earlier: {run_dir / 'last.pt'}")
        return run_dir / "last.pt"
    cfg = load_train_config(config, overrides)
    log(f"training {cfg.model.name} with {config.name} for {cfg.schedule.iterations} iterations into {run_dir} "
        "(cached for the next run)")
    started = time.monotonic()
    # an interrupted earlier run resumes from its last.pt instead of starting over
    result = train(cfg, run_dir, resume=(run_dir / "last.pt").exists())
    with atomic_write(done) as tmp:
        tmp.write_text(json.dumps({"iterations": result.iteration, "miou": result.miou,
                                   "seconds": round(time.monotonic() - started, 1)}))
    return run_dir / "last.pt"


def _wait_for_text(path: Path, text: str, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        content = path.read_text(errors="replace") if path.exists() else ""
        if text in content:
            return
        if proc.poll() is not None:
            raise SFNetError(f"{what} exited (code {proc.returncode}) before it was ready; see {path}:\n"
                             + "\n".join(content.splitlines()[-15:]))
        if time.monotonic() > deadline:
            raise SFNetError(f"{what} not ready after {timeout:.0f} s; see {path}")
        time.sleep(0.1)


def _stop(proc: subprocess.Popen | None, timeout: float = 20.0) -> None:
    """SIGINT (clean shutdown: the recorder finalises its bag), then SIGKILL if it hangs."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def write_strip(checkpoint: Path, image: np.ndarray, truth: np.ndarray, path: Path) -> None:
    from sfnet_core.inference import Segmenter
    from sfnet_core.viz import colorize, flow_to_color, image_strip, overlay

    segmenter = Segmenter.from_checkpoint(checkpoint, device="cpu", warmup=False)
    result = segmenter.segment(image, return_flows=True)
    palette = segmenter.classes.palette()
    color = colorize(result.labels, palette)
    panels = [image, colorize(truth, palette), color, overlay(image, color)]
    captions = ["input", "ground truth", "labels", "overlay"]
    if result.flows:
        panels.append(flow_to_color(result.flows[-1]))  # finest FAM: the flow that aligns the 1/4 map
        captions.append("semantic flow")
    strip = image_strip(panels, captions, height=max(image.shape[0], 256))
    ok, png = cv2.imencode(".png", cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
    if not ok:
        raise SFNetError(f"{path}: PNG encoding failed")
    with atomic_write(path) as tmp:
        tmp.write_bytes(png.tobytes())


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    from sfnet_core.training.config import load_train_config
    from sfnet_ros.tools.bag_eval import evaluate_bag
    from sfnet_ros.tools.live_eval import live_evaluate

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    config = Path(args.config).resolve()
    if not config.exists():
        raise SFNetError(f"{config}: training recipe not found")
    if args.size is None:
        synthetic = load_train_config(config, args.train_overrides).data.synthetic
        args.size = (synthetic.height, synthetic.width)
    height, width = args.size

    # 1. the bag: a drive the network never saw (scene seed outside the training seeds)
    bag = out / "drive.mcap"
    log(f"writing a synthetic bag of {args.frames} frames ({height}x{width}) to {bag}")
    if bag.exists():
        bag.unlink()
    _, images, truths = write_synthetic_bag(bag, args.frames, height, width, seed=args.seed,
                                            image_topic=IMAGE_TOPIC, label_topic=LABEL_TOPIC)

    # 2. the checkpoint
    checkpoint = Path(args.checkpoint) if args.checkpoint else checkpoint_for(
        config, args.train_overrides, Path(args.cache_dir).expanduser())

    # 3. offline: as fast as the device allows
    log("offline evaluation over the bag (sfnet-bag-eval)")
    offline = evaluate_bag(bag, IMAGE_TOPIC, checkpoint, label_topic=LABEL_TOPIC, out=out / "drive_segmented.mcap",
                           batch_size=4, device=args.device, mask_classes=["road", "car"], progress=True)

    # 4. live: the node as its own process, its own ROS domain, localhost only
    domain = args.domain_id or (os.getpid() % 90) + 10
    os.environ.update({"ROS_DOMAIN_ID": str(domain), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
                       "ROS_LOCALHOST_ONLY": "1", "PYTHONUNBUFFERED": "1"})
    env = dict(os.environ)
    node_cmd = [sys.executable, "-m", "sfnet_ros.node", "--ros-args"]
    if PARAMS_FILE.exists():
        node_cmd += ["--params-file", str(PARAMS_FILE)]
    node_cmd += ["-p", f"checkpoint:={json.dumps(str(checkpoint))}", "-p", f"device:={args.device}",
                 "-r", f"image:={IMAGE_TOPIC}", "-r", "__ns:=/front"]
    node_log, rec_log = out / "node.log", out / "record.log"
    recorded = out / "node_outputs.mcap"
    node = recorder = None
    try:
        log(f"starting sfnet_node (ROS_DOMAIN_ID={domain}): {' '.join(node_cmd[1:])}")
        with open(node_log, "wb") as node_out:
            node = subprocess.Popen(node_cmd, env=env, cwd=REPO_ROOT, stdout=node_out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        _wait_for_text(node_log, "active:", node, START_TIMEOUT_S, "sfnet_node")
        if recorded.exists():
            recorded.unlink()
        with open(rec_log, "wb") as rec_out:
            recorder = subprocess.Popen([sys.executable, "-m", "sfnet_ros.tools.bag_record", "--topics", *OUTPUTS,
                                         "--out", str(recorded)], env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                                        stderr=rec_out, stdin=subprocess.DEVNULL, start_new_session=True)
        _wait_for_text(rec_log, f"recording {len(OUTPUTS)} topic", recorder, START_TIMEOUT_S, "sfnet-bag-record")
        log(f"playing the bag into the node at rate {args.rate}{' (lockstep)' if args.lockstep else ''}")
        live = live_evaluate(bag, IMAGE_TOPIC, LABEL_TOPIC, rate=args.rate, lockstep=args.lockstep,
                             wait_timeout=START_TIMEOUT_S)
    finally:
        _stop(recorder)
        _stop(node)

    # 5. a picture a person can open
    strip = out / "strip.png"
    frame = len(images) // 2
    write_strip(checkpoint, images[frame], truths[frame], strip)

    report = {
        "checkpoint": str(checkpoint),
        "offline": {k: offline[k] for k in ("frames", "fps", "model_fps", "latency_ms", "miou", "device")},
        "live": {k: live[k] for k in ("sent", "received", "dropped", "fps", "latency_ms", "miou")},
        "files": {"bag": str(bag), "segmented_bag": str(out / "drive_segmented.mcap"),
                  "node_outputs_bag": str(recorded), "strip": str(strip), "node_log": str(node_log),
                  "report": str(out / "report.json")},
    }
    with atomic_write(out / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sfnet-demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--frames", type=int, default=20, help="frames in the synthetic bag (10 Hz)")
    p.add_argument("--size", type=parse_size, default=None, help="HEIGHTxWIDTH (default: the recipe's synthetic size)")
    p.add_argument("--seed", type=int, default=987654, help="scene of the demo drive")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="training recipe")
    p.add_argument("--train-overrides", nargs="*", default=[], metavar="key=value",
                   help="recipe overrides, e.g. schedule.iterations=50 (part of the cache key)")
    p.add_argument("--checkpoint", help="use this checkpoint instead of training")
    p.add_argument("--cache-dir", default=os.environ.get("SFNET_CACHE", "~/.cache/sfnet_ros/demo"))
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--rate", type=float, default=1.0, help="playback rate into the node")
    p.add_argument("--lockstep", action="store_true", help="send a frame only after the previous one's labels")
    p.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID for the node (default: from the pid)")
    args = p.parse_args(argv)

    def run() -> int:
        if args.frames < 1 or args.rate <= 0:
            raise SFNetError("--frames must be >= 1 and --rate > 0")
        return _print_report(run_demo(args))

    return run_command("sfnet-demo", run, interrupted="interrupted; everything it started has been stopped")


def _print_report(report: dict) -> int:
    off, live = report["offline"], report["live"]
    lat = live["latency_ms"]
    print(f"\nOffline (sfnet-bag-eval, {off['device']}): {off['frames']} frames, model {off['model_fps']} fps, "
          f"{off['fps']} fps end to end, p50 {off['latency_ms']['p50']} ms/frame, mIoU {off['miou']}")
    print(f"Live (bag -> sfnet_node -> outputs): sent {live['sent']}, received {live['received']}, dropped "
          f"{live['dropped']}, {live['fps']} fps, latency p50 {lat['p50']} ms p99 {lat['p99']} ms, mIoU {live['miou']}")
    print("Files:")
    for name, path in report["files"].items():
        print(f"  {name:17s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
