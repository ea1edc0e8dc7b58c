"""``sfnet-demo`` (``make demo``): the whole pipeline on a fresh machine, nothing downloaded.

1. writes a synthetic driving bag with ground-truth labels (``sfnet_ros.tools.synthetic_bag``);
2. trains a small checkpoint with ``training/configs/synthetic_quick.yaml`` (cached under
   ``~/.cache/sfnet_ros/demo/<hash of the recipe and the model code>/``, reused on the next run);
3. evaluates it offline over the bag (``sfnet-bag-eval``: model FPS, mIoU, a segmented MCAP);
4. starts ``sfnet_node`` as a process, exactly as the launch file does, on a ROS domain of its own
   with localhost-only discovery; records its outputs (``sfnet-bag-record``) while
   ``sfnet-live-eval`` plays the bag into it: end-to-end FPS, latency, drops, mIoU;
5. writes a picture, ``strip.png``: input | ground truth | labels | overlay | semantic flow, with
   a legend of the classes present, the flow's colour-wheel key and the live numbers.

The output folder is written as a hidden staging folder next to ``--out`` and renamed into place
when complete: an error, Ctrl-C or SIGTERM leave nothing behind (and everything it started is
stopped). An existing ``--out`` is refused unless ``--overwrite`` is given, and even then only a
folder that holds nothing but a previous demo's files is replaced. Child processes get absolute
paths only, so the demo runs from any working directory.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sfnet_core.cli.common import (
    add_overwrite,
    add_threads,
    check_recipe,
    device_spec,
    make_parser,
    positive_float,
    positive_int,
    run_command,
)
from sfnet_core.data.synthetic_scenes.arguments import parse_size
from sfnet_core.errors import SFNetError, require_torch_file
from sfnet_core.evaluation.report_text import percent
from sfnet_core.io_utils import atomic_write, check_output
from sfnet_core.viz import (
    class_legend,
    colorize,
    draw_text,
    flow_to_color,
    flow_wheel,
    image_strip,
    overlay,
    stack_rows,
    text_band,
    text_scale,
)
from sfnet_ros.launch_support import node_launch
from sfnet_ros.ros_distro import apply_localhost_discovery
from sfnet_ros.tools.bag_eval import evaluate_bag
from sfnet_ros.tools.live_eval import live_evaluate
from sfnet_ros.tools.synthetic_bag import write_synthetic_bag

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / "training" / "configs" / "synthetic_quick.yaml"
PARAMS_FILE = REPO_ROOT / "config" / "sfnet.yaml"
IMAGE_TOPIC = "/front/image_raw"
LABEL_TOPIC = "/front/labels"
OUTPUTS = ["/front/segmentation/labels", "/front/segmentation/color"]
START_TIMEOUT_S = 180.0
TOOL = "sfnet-demo"  # the name in --out's manifest: --overwrite replaces only that tool's unchanged folder
NUM_CLASSES = 19  # the synthetic drive is labelled with the Cityscapes train ids


@dataclass
class DemoOptions:
    """What ``run_demo`` does (``sfnet-demo --help`` describes each field)."""

    out: Path = Path("demo_out")
    frames: int = 20
    size: tuple[int, int] | None = None        # (height, width); None = the recipe's synthetic size
    seed: int = 987654
    config: Path = DEFAULT_CONFIG
    train_overrides: tuple[str, ...] = ()
    checkpoint: Path | None = None             # None = train (or reuse the cached training of) config
    cache_dir: Path = Path("~/.cache/sfnet_ros/demo")
    device: str = "cpu"
    rate: float = 1.0
    lockstep: bool = False
    domain_id: int | None = None
    overwrite: bool = False
    threads: int = 0                           # CPU threads of the network, offline and in the node; 0 = the cores


def log(text: str) -> None:
    print(f"[sfnet-demo] {text}", file=sys.stderr, flush=True)


def ros_domain_from_environment() -> int | None:
    """``$ROS_DOMAIN_ID`` when it is set to a valid id (0-232), else None."""
    text = os.environ.get("ROS_DOMAIN_ID", "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) > 232:
        raise SFNetError(f"ROS_DOMAIN_ID={text!r}: expected an integer from 0 to 232")
    return int(text)


def cache_key(config: Path, overrides: list[str] | tuple[str, ...] = ()) -> str:
    """The cache folder name of a demo training: the recipe's bytes, the overrides and the model's code.

    The code is part of the key: a checkpoint trained by an earlier definition of the network
    (e.g. before the PPM matched the released code) must not be reused silently.
    """
    import sfnet_core.models  # lazy: torch (only its source files are hashed)

    digest = hashlib.sha256(config.read_bytes() + "\n".join(overrides).encode())
    for source in sorted(Path(sfnet_core.models.__file__).parent.glob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def checkpoint_for(config: Path, overrides: list[str] | tuple[str, ...], cache_dir: Path) -> Path:
    """Train ``config`` (+ overrides) once; later runs with the same recipe reuse the result."""
    from sfnet_core.training.config import load_train_config  # lazy: torch
    from sfnet_core.training.engine import train  # lazy: torch

    run_dir = cache_dir / cache_key(config, overrides)
    done = run_dir / "demo_done.json"
    if done.exists() and (run_dir / "last.pt").exists():
        log(f"reusing the checkpoint trained earlier: {run_dir / 'last.pt'}")
        return run_dir / "last.pt"
    cfg = load_train_config(config, list(overrides))
    log(f"training {cfg.model.name} with {config.name} for {cfg.schedule.iterations} iterations into {run_dir} "
        "(cached for the next run)")
    started = time.monotonic()
    # an interrupted earlier run resumes from its last.pt instead of starting over
    result = train(cfg, run_dir, resume=(run_dir / "last.pt").exists())
    with atomic_write(done) as tmp:
        tmp.write_text(json.dumps({"iterations": result.iteration, "miou": result.miou,
                                   "seconds": round(time.monotonic() - started, 1)}))
    return run_dir / "last.pt"


def _last_lines(path: Path, count: int = 3) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()] \
        if path.exists() else []
    return " | ".join(lines[-count:]) or "(no output)"


def wait_for_node(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    """Until the node's log says it is active. A failed configure (its ``configure failed:``
    line) or an exit is an error at once, with the node's reason, not after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        content = path.read_text(errors="replace") if path.exists() else ""
        if "active:" in content:
            return
        for line in content.splitlines():
            if "configure failed:" in line:
                raise SFNetError("sfnet_node " + line[line.index("configure failed:"):].strip())
        if proc.poll() is not None:
            raise SFNetError(f"sfnet_node exited (code {proc.returncode}) before it was active: {_last_lines(path)}")
        if time.monotonic() > deadline:
            raise SFNetError(f"sfnet_node not active after {timeout:.0f} s: {_last_lines(path)}")
        time.sleep(0.1)


def _wait_for_text(path: Path, text: str, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        content = path.read_text(errors="replace") if path.exists() else ""
        if text in content:
            return
        if proc.poll() is not None:
            raise SFNetError(f"{what} exited (code {proc.returncode}) before it was ready: {_last_lines(path)}")
        if time.monotonic() > deadline:
            raise SFNetError(f"{what} not ready after {timeout:.0f} s: {_last_lines(path)}")
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


def _fmt(value: Any, digits: int = 1, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def write_strip(checkpoint: Path, image: np.ndarray, truth: np.ndarray, path: Path,
                live: dict[str, Any] | None = None, offline: dict[str, Any] | None = None) -> None:
    """The picture people look at first: five captioned panels, a legend of the classes present
    (prediction or ground truth) with their colours, the flow panel's colour-wheel key with the
    magnitude it saturates at, and the numbers of the run."""
    from sfnet_core.inference import Segmenter  # lazy: torch

    segmenter = Segmenter.from_checkpoint(checkpoint, device="cpu", warmup=False, flows=True)
    result = segmenter.segment(image, return_flows=True)
    classes = segmenter.classes
    palette = classes.palette()
    color = colorize(result.labels, palette)
    panels = [image, colorize(truth, palette), color, overlay(image, color)]
    captions = ["input", "ground truth", "labels", "overlay"]
    height = max(image.shape[0], 256)
    scale = text_scale(height)
    saturation = None
    if result.flows:
        # the finest FAM's flow (it aligns the 1/8 map to the 1/4 grid), in pixels of its grid;
        # shown in input pixels. The wheel saturates at the 99th percentile of the magnitude so
        # the panel is not washed out by a few long vectors.
        flow = result.flows[-1] * (image.shape[1] / result.flows[-1].shape[2])
        magnitude = np.hypot(flow[0], flow[1])
        saturation = max(float(np.percentile(magnitude, 99)), 1e-3)
        panels.append(flow_to_color(flow, max_magnitude=saturation))
        captions.append("semantic flow (finest FAM)")
    top = image_strip(panels, captions, height=height)
    width = top.shape[1]
    panel_w = round(image.shape[1] * height / image.shape[0])

    present = sorted(set(np.unique(result.labels).tolist()) | set(np.unique(truth).tolist()))
    entries = [(classes.names[i], palette[i]) for i in present if i < classes.num_classes]
    legend_w = width - (panel_w if saturation is not None else 0)
    legend = class_legend(entries, legend_w, scale)
    bottom = legend
    if saturation is not None:
        key_size = max(48, min(panel_w // 4, 112))
        key = np.full((max(legend.shape[0], key_size + 16), panel_w, 3), 255, np.uint8)
        key[8:8 + key_size, 8:8 + key_size] = flow_wheel(key_size, saturation)
        x = 16 + key_size
        lines = ["flow key: hue = direction,", "saturation = length,", f"full at {saturation:.2f} px", "(input pixels)"]
        y = 8
        for line in lines:
            draw_text(key, line, x, y, scale * 0.85)
            y += int(22 * scale * 0.85) + 6
        legend = np.concatenate([legend, np.full((key.shape[0] - legend.shape[0], legend_w, 3), 255, np.uint8)]) \
            if legend.shape[0] < key.shape[0] else legend
        key = np.concatenate([key, np.full((legend.shape[0] - key.shape[0], panel_w, 3), 255, np.uint8)]) \
            if key.shape[0] < legend.shape[0] else key
        bottom = np.concatenate([legend, key], axis=1)
    notes = []
    if live:
        lat = live.get("latency_ms") or {}
        notes.append(f"live (bag -> sfnet_node -> outputs, {live.get('device', 'cpu')}): "
                     f"{_fmt(live.get('fps'))} FPS, latency p50 {_fmt(lat.get('p50'))} ms / p99 "
                     f"{_fmt(lat.get('p99'))} ms, mIoU {percent(live.get('miou'))}, "
                     f"{live.get('received')}/{live.get('sent')} frames")
    if offline:
        lat = offline.get("latency_ms") or {}
        notes.append(f"offline (sfnet-bag-eval): model {_fmt(offline.get('model_fps'))} FPS, "
                     f"{_fmt(lat.get('p50'))} ms/frame, mIoU {percent(offline.get('miou'))} over "
                     f"{offline.get('frames')} frames of {image.shape[1]}x{image.shape[0]}")
    rows = [top, bottom] + ([text_band(notes, width, scale)] if notes else [])
    strip = stack_rows(rows, width)
    ok, png = cv2.imencode(".png", cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
    if not ok:
        raise SFNetError(f"{path}: PNG encoding failed")
    with atomic_write(path) as tmp:
        tmp.write_bytes(png.tobytes())


def _check_options(opts: DemoOptions) -> tuple[Path, Path, Path | None]:
    """(out, config, checkpoint), absolute; SFNetError on anything the run would trip over later."""
    config = Path(opts.config).expanduser().resolve()
    if not config.is_file():
        raise SFNetError(f"--config: {opts.config}: training recipe not found")
    checkpoint = Path(opts.checkpoint).expanduser().resolve() if opts.checkpoint else None
    # the cache is an input too: an --out holding it would be replaced with it
    out = check_output(opts.out, inputs=[config, checkpoint, Path(opts.cache_dir).expanduser()],
                       overwrite=opts.overwrite, kind="dir", tool=TOOL)
    if opts.frames < 1 or opts.rate <= 0:
        raise SFNetError("--frames must be >= 1 and --rate > 0")
    check_recipe("sfnet-demo", str(config), list(opts.train_overrides), empty="training with every default")
    if checkpoint is not None:
        require_torch_file(checkpoint)
    # lazy: torch, after the checks above
    from sfnet_core.checkpoint import load_checkpoint  # lazy: torch
    from sfnet_core.devices import resolve_device  # lazy: torch

    resolve_device(opts.device, "--device")
    if checkpoint is not None:
        ckpt = load_checkpoint(checkpoint)
        if ckpt.num_classes != NUM_CLASSES:
            raise SFNetError(f"--checkpoint: {opts.checkpoint} predicts {ckpt.num_classes} classes, but the demo's "
                             f"synthetic drive is labelled with the {NUM_CLASSES} Cityscapes train ids")
    return out, config, checkpoint


def run_demo(opts: DemoOptions) -> dict[str, Any]:
    """Run the demo into ``opts.out`` (see the module docstring); returns the report."""
    out, config, checkpoint = _check_options(opts)
    from sfnet_core.training.config import load_train_config  # lazy: torch

    size = opts.size
    if size is None:
        synthetic = load_train_config(config, list(opts.train_overrides)).data.synthetic
        size = (synthetic.height, synthetic.width)
    height, width = size

    with atomic_write(out, overwrite=opts.overwrite, tool=TOOL, what="--out") as stage:
        stage.mkdir()
        # 1. the bag: a drive the network never saw (scene seed outside the training seeds)
        bag = stage / "drive.mcap"
        log(f"writing a synthetic bag of {opts.frames} frames ({height}x{width}) to {out / bag.name}")
        _, images, truths = write_synthetic_bag(bag, opts.frames, height, width, seed=opts.seed,
                                                image_topic=IMAGE_TOPIC, label_topic=LABEL_TOPIC)

        # 2. the checkpoint
        if checkpoint is None:
            checkpoint = checkpoint_for(config, opts.train_overrides, Path(opts.cache_dir).expanduser().resolve())

        # 3. offline: as fast as the device allows
        log("offline evaluation over the bag (sfnet-bag-eval)")
        offline = evaluate_bag(bag, IMAGE_TOPIC, checkpoint, label_topic=LABEL_TOPIC,
                               out=stage / "drive_segmented.mcap", batch_size=4, device=opts.device,
                               mask_classes=["road", "car"], progress=True, threads=opts.threads)

        # 4. live: the node as its own process, its own ROS domain, localhost only
        domain = opts.domain_id
        if domain is None:
            domain = ros_domain_from_environment()
        if domain is None:
            domain = (os.getpid() % 90) + 10
        os.environ.update({"ROS_DOMAIN_ID": str(domain), "PYTHONUNBUFFERED": "1"})
        apply_localhost_discovery(os.environ)
        env = dict(os.environ)
        node_cmd = node_launch({"checkpoint": str(checkpoint), "device": opts.device, "threads": opts.threads},
                               params_file=PARAMS_FILE if PARAMS_FILE.exists() else None,
                               image_topic=IMAGE_TOPIC, namespace="/front").argv()
        node_log, rec_log = stage / "node.log", stage / "record.log"
        recorded = stage / "node_outputs.mcap"
        node = recorder = None
        try:
            log(f"starting sfnet_node (ROS_DOMAIN_ID={domain}): {' '.join(node_cmd[1:])}")
            with open(node_log, "wb") as node_out:
                # cwd: the staging folder, and every path absolute: nothing depends on where it runs
                node = subprocess.Popen(node_cmd, env=env, cwd=stage, stdout=node_out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
            wait_for_node(node_log, node, START_TIMEOUT_S)
            with open(rec_log, "wb") as rec_out:
                recorder = subprocess.Popen([sys.executable, "-m", "sfnet_ros.tools.bag_record", "--topics", *OUTPUTS,
                                             "--out", str(recorded)], env=env, cwd=stage, stdout=subprocess.DEVNULL,
                                            stderr=rec_out, stdin=subprocess.DEVNULL, start_new_session=True)
            _wait_for_text(rec_log, f"recording {len(OUTPUTS)} topic", recorder, START_TIMEOUT_S, "sfnet-bag-record")
            log(f"playing the bag into the node at rate {opts.rate}{' (lockstep)' if opts.lockstep else ''}")
            live = live_evaluate(bag, IMAGE_TOPIC, LABEL_TOPIC, rate=opts.rate, lockstep=opts.lockstep,
                                 wait_timeout=START_TIMEOUT_S)
        finally:
            _stop(recorder)
            _stop(node)

        # 5. a picture a person can open
        frame = len(images) // 2
        live["device"] = opts.device
        write_strip(checkpoint, images[frame], truths[frame], stage / "strip.png", live=live, offline=offline)

        files = {"bag": "drive.mcap", "segmented_bag": "drive_segmented.mcap", "node_outputs_bag": "node_outputs.mcap",
                 "strip": "strip.png", "node_log": "node.log", "report": "report.json"}
        report = {
            "checkpoint": str(checkpoint),
            "offline": {k: offline[k] for k in ("frames", "fps", "model_fps", "latency_ms", "miou", "device")},
            "live": {k: live[k] for k in ("sent", "received", "dropped", "drop_reasons", "fps", "latency_ms", "miou")},
            "files": {key: str(out / name) for key, name in files.items()},
        }
        (stage / "report.json").write_text(json.dumps(report, indent=2))
    return report


DESCRIPTION = """The whole pipeline on this machine, nothing downloaded: a synthetic drive bag,
a small trained checkpoint (cached), offline evaluation (sfnet-bag-eval), the node as its own
process fed by sfnet-live-eval and recorded by sfnet-bag-record, and a picture (strip.png).

  sfnet-demo --out demo_out

--out is written as a whole when the run completes (nothing is left behind on an error, Ctrl-C
or SIGTERM). An existing --out is refused unless --overwrite, and even then only a folder that
holds a previous demo's files and nothing else is replaced."""


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("sfnet-demo", DESCRIPTION)
    p.add_argument("--out", default="demo_out", help="output folder")
    p.add_argument("--frames", type=positive_int, default=20, help="frames in the synthetic bag (10 Hz)")
    p.add_argument("--size", type=parse_size, default=None,
                   help="HEIGHTxWIDTH (default: the recipe's synthetic size)")
    p.add_argument("--seed", type=int, default=987654, help="scene of the demo drive")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="training recipe")
    p.add_argument("--train-overrides", nargs="*", default=[], metavar="key=value",
                   help="recipe overrides, e.g. schedule.iterations=50 (part of the cache key)")
    p.add_argument("--checkpoint", help="use this checkpoint (19 Cityscapes classes) instead of training "
                                        "(default: train the recipe, or reuse its cached training)")
    p.add_argument("--cache-dir", default=os.environ.get("SFNET_CACHE", "~/.cache/sfnet_ros/demo"),
                   help="where trained demo checkpoints are kept (environment: SFNET_CACHE)")
    p.add_argument("--device", type=device_spec, default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--rate", type=positive_float, default=1.0, help="playback rate into the node")
    p.add_argument("--lockstep", action="store_true", help="send a frame only after the previous one's labels")
    p.add_argument("--domain-id", type=int, default=None,
                   help="ROS_DOMAIN_ID for the node (default: $ROS_DOMAIN_ID, else one from the process id)")
    add_threads(p)
    add_overwrite(p, "a previous demo's --out folder")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    opts = DemoOptions(
        out=Path(args.out), frames=args.frames, size=args.size, seed=args.seed, config=Path(args.config),
        train_overrides=tuple(args.train_overrides), checkpoint=Path(args.checkpoint) if args.checkpoint else None,
        cache_dir=Path(args.cache_dir), device=args.device, rate=args.rate, lockstep=args.lockstep,
        domain_id=args.domain_id, overwrite=args.overwrite, threads=args.threads)
    return run_command("sfnet-demo", lambda: _print_report(run_demo(opts)), (SFNetError, OSError),
                       interrupted="interrupted; everything it started has been stopped, no output written")


def _print_report(report: dict) -> int:
    off, live = report["offline"], report["live"]
    lat = live["latency_ms"]
    print(f"\nOffline (sfnet-bag-eval, {off['device']}): {off['frames']} frames, model {off['model_fps']} fps, "
          f"{off['fps']} fps end to end, p50 {off['latency_ms']['p50']} ms/frame, mIoU {percent(off['miou'])}")
    print(f"Live (bag -> sfnet_node -> outputs): sent {live['sent']}, received {live['received']}, dropped "
          f"{live['dropped']}, {live['fps']} fps, latency p50 {lat['p50']} ms p99 {lat['p99']} ms, "
          f"mIoU {percent(live['miou'])}")
    for reason, count in live.get("drop_reasons", {}).items():
        print(f"  dropped {count}: {reason}")
    print("Files:")
    for name, path in report["files"].items():
        print(f"  {name:17s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
