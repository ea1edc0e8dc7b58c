"""``sfnet-fleet-eval``: evaluate a fleet of drives, see where the model fails (``sfnet-fleet-merge``:
``fleet_merge``).

    sfnet-fleet-eval --bag drives/ --cameras front,left --checkpoint new.pt --out fleet
    sfnet-fleet-eval --bag drives/ --cameras front,left --checkpoint new.pt --baseline cars.pt \\
        --out ab --gate-classes person,car --max-drop 1.0
    sfnet-fleet-merge results/* --out fleet

The output folder holds ``summary.json`` (everything), ``summary.md`` (also printed on stdout, for
CI logs), ``frames.csv`` (a row per frame), ``report.html`` (one self-contained page) and
``partials/`` (one result per bag: what ``sfnet-fleet-merge`` reads). Exit status: 0; 1 when the
gate failed; 3 when some bags failed (listed with their reasons; the others are in the report);
2 on bad input.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sfnet_core.cli.common import add_overwrite, add_threads, device_spec, make_parser, positive_int, run_command
from sfnet_core.errors import SFNetError, require_model_file
from sfnet_core.io_utils import OutputError, atomic_write, check_output
from sfnet_ros.conversions import ImageConversionError
from sfnet_ros.tools.bag_io import BagError
from sfnet_ros.tools.fleet.results import BagResult, ResultError
from sfnet_ros.tools.fleet.sources import (
    camera_from_pair,
    cameras_from_names,
    check_cameras,
    display_name,
    resolve_bags,
)

TOOL = "sfnet-fleet-eval"
EXIT_GATE_FAILED = 1
EXIT_SOME_BAGS_FAILED = 3


def partial_folder(out: Path) -> Path:
    """Where a run keeps finished bags until its output is complete: beside ``out``, hidden."""
    return out.parent / f".{out.name}.partial"


def write_outputs(out: Path, summary: dict[str, Any], results: list[BagResult], report: Path | None,
                  overwrite: bool, tool: str) -> str:
    """The output folder (atomically, with its manifest) and the report; returns the Markdown."""
    from sfnet_ros.tools.fleet.report_html import render_html
    from sfnet_ros.tools.fleet.report_markdown import render_markdown
    from sfnet_ros.tools.fleet.summarize import frames_csv

    markdown = render_markdown(summary)
    html = render_html(summary)
    with atomic_write(out, overwrite=overwrite, tool=tool, what="--out") as tmp:
        (tmp / "partials").mkdir(parents=True)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        (tmp / "summary.md").write_text(markdown, encoding="utf-8")
        (tmp / "frames.csv").write_text(frames_csv(results), encoding="utf-8")
        if report is None:
            (tmp / "report.html").write_text(html, encoding="utf-8")
        for result in results:
            result.save(tmp / "partials" / f"{result.identity}-{result.settings}.npz")
    if report is not None:
        with atomic_write(report, overwrite=overwrite, what="--report") as tmp:
            tmp.write_text(html, encoding="utf-8")
    return markdown


def _classes(results: list[BagResult]) -> tuple[list[dict[str, Any]], int]:
    info = results[0].info
    return info["classes"], int(info.get("ignore_index", 255))


def _exit_status(summary: dict[str, Any]) -> int:
    if summary["failed"]:
        return EXIT_SOME_BAGS_FAILED
    gate = (summary.get("compare") or {}).get("gate")
    return EXIT_GATE_FAILED if gate and not gate["passed"] else 0


def report_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("report")
    group.add_argument("--report", metavar="NAME.html",
                       help="write the HTML report here too (default: only <out>/report.html)")
    group.add_argument("--worst", type=positive_int, default=8, help="worst frames shown as strips")
    group.add_argument("--uncertain", type=positive_int, default=50,
                       help="most uncertain frames listed (for review and labelling)")
    group.add_argument("--resample", choices=("frames", "drives"), default="frames",
                       help="A/B bootstrap unit: frames, or whole drives (bags; wider, honest when frames are alike)")
    group.add_argument("--resamples", type=positive_int, default=1000, help="bootstrap resamples")
    group.add_argument("--gate-classes", default="",
                       help="A/B as a CI gate: comma-separated class names; exit 1 if the candidate's IoU of any "
                            "is lower than the baseline's by more than --max-drop points")
    group.add_argument("--max-drop", type=float, default=0.0, help="the gate's tolerance in IoU points (0-100)")
    add_overwrite(parser, "an existing --out folder (only one this tool wrote) and --report file")


def gate_classes_of(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    classes = [c.strip() for c in args.gate_classes.split(",") if c.strip()]
    if not 0 <= args.max_drop <= 100:
        parser.error(f"--max-drop: expected 0..100 IoU points, got {args.max_drop:g}")
    return classes


def _check_gate(classes: list[str], names: list[str], compared: bool) -> None:
    if classes and not compared:
        raise SFNetError("--gate-classes compares two models: give --baseline (or merge A/B results)")
    unknown = [c for c in classes if c not in names]
    if unknown:
        raise SFNetError(f"--gate-classes: {', '.join(unknown)} not among the model's classes ({', '.join(names)})")


def check_outputs(args: argparse.Namespace, inputs: list[Any], tool: str) -> tuple[Path, Path | None]:
    out = check_output(args.out, inputs=inputs, overwrite=args.overwrite, kind="dir", tool=tool)
    report = None
    if args.report:
        report = check_output(args.report, inputs=[*inputs, args.out], overwrite=args.overwrite, what="--report")
        if not args.report.endswith((".html", ".htm")):
            raise OutputError(f"--report: {args.report}: the report is an HTML page (name it NAME.html)")
    return out, report


# ----------------------------------------------------------------------------- sfnet-fleet-eval
DESCRIPTION = """Evaluate one or two models on a fleet of drives: many bags, several cameras; totals
from summed confusion matrices (exactly the numbers of evaluating everything as one set), per
bag, camera and class, the frames ranked by uncertainty (1 - the margin between the two most
probable classes), the worst frames as pictures, and with --baseline an A/B comparison with
bootstrap intervals and an optional CI gate.

  sfnet-fleet-eval --bag drives/ --cameras front,left --checkpoint new.pt --out fleet

A killed run started again with the same arguments continues where it stopped (finished bags are
kept in .<out>.partial beside --out until the output is complete). A bag that cannot be read is
listed with its reason; the others are evaluated (exit status 3). Exit 1: the gate failed."""


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(TOOL, DESCRIPTION)
    parser.add_argument("--bag", action="append", default=[], metavar="BAG",
                        help="a bag (.mcap, .db3, .bag, rosbag2 folder), a folder of bags, or a glob; repeatable")
    parser.add_argument("--bag-list", action="append", default=[], metavar="FILE",
                        help="a text file naming bags, folders or globs, one per line; repeatable")
    parser.add_argument("--camera", action="append", default=[], metavar="IMAGE_TOPIC[:LABEL_TOPIC]",
                        help="a camera by its topics (named after the image topic's namespace); repeatable")
    parser.add_argument("--cameras", default="", metavar="NAME,...",
                        help="cameras by name, each in its namespace: /<name>/<--image-name>, labels "
                             "/<name>/<--label-name> where a bag has them")
    parser.add_argument("--image-name", default="image_raw", help="--cameras: the image topic's last name")
    parser.add_argument("--label-name", default="labels", help="--cameras: the label topic's last name")
    parser.add_argument("--checkpoint", required=True, help="the model (.pt or self-describing .onnx); "
                                                            "with --baseline, the candidate")
    parser.add_argument("--baseline", help="A/B: the model to compare against (e.g. the one on the cars)")
    parser.add_argument("--label-classes", metavar="YAML",
                        help="a class table whose id_map maps the bags' label values to the model's train ids "
                             "(default: labels are train ids)")
    parser.add_argument("--out", required=True, help="the new output folder")
    run = parser.add_argument_group("how it runs")
    run.add_argument("--workers", type=positive_int, default=1,
                     help="worker processes on this machine, one bag each at a time (a worker per GPU, or per "
                          "CPU core: --threads is split between them)")
    run.add_argument("--ray", metavar="ADDRESS",
                     help="run one task per bag on a Ray cluster (ADDRESS, or auto for RAY_ADDRESS), or on a Ray "
                          "started here for the run (local)")
    run.add_argument("--cpus-per-task", type=float, default=1.0, help="--ray: CPUs each bag's task declares")
    run.add_argument("--gpus-per-task", type=float, default=0.0, help="--ray: GPUs each bag's task declares")
    run.add_argument("--backend", choices=("auto", "torch", "onnxruntime", "openvino"), default="auto",
                     help="as sfnet-bag-eval's")
    run.add_argument("--device", type=device_spec, default="auto", help="auto, cpu, cuda or cuda:N")
    run.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                     help="auto: bf16/fp16 on CUDA, fp32 on the CPU")
    run.add_argument("--batch-size", type=positive_int, default=4, help="frames per forward pass")
    add_threads(run)
    run.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    report_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    gate_classes = gate_classes_of(args, parser)
    if gate_classes and not args.baseline:
        parser.error("--gate-classes compares two models: give --baseline")
    if args.ray and args.workers != 1:
        parser.error("--workers is for this machine; with --ray the cluster's resources decide (--cpus-per-task)")

    def run() -> int:
        from sfnet_ros.tools.fleet.runner import FleetOptions, model_class_names, plan, settings_digest

        cameras = check_cameras([camera_from_pair(c) for c in args.camera] + cameras_from_names(
            args.cameras.split(",") if args.cameras else [], args.image_name, args.label_name))
        bags = resolve_bags(args.bag, args.bag_list)
        for model in [args.checkpoint, args.baseline] if args.baseline else [args.checkpoint]:
            require_model_file(model)
        inputs = [*bags, args.checkpoint, args.baseline, args.label_classes, *args.bag_list]
        out, report = check_outputs(args, inputs, TOOL)
        if gate_classes:
            _check_gate(gate_classes, model_class_names(args.checkpoint), compared=True)
        options = FleetOptions(args.checkpoint, tuple(cameras), args.baseline, args.backend, args.device,
                               args.precision, args.threads, args.batch_size, args.worst, args.label_classes)
        settings = settings_digest(options)
        tasks, failed = plan(bags, [display_name(b, bags) for b in bags], cameras)
        if not tasks:
            reasons = "; ".join(f"{f['bag']}: {f['reason']}" for f in failed[:3])
            raise BagError(reasons if len(failed) == 1 else f"no bag could be read ({len(failed)}): {reasons}")
        partials = partial_folder(out)
        partials.mkdir(exist_ok=True)
        try:
            return _evaluate(args, tasks, failed, options, settings, partials, gate_classes, out, report)
        finally:  # an error or a signal before any bag finished leaves nothing behind
            if partials.is_dir() and not any(partials.iterdir()):
                partials.rmdir()

    return run_command(TOOL, run, (SFNetError, ImageConversionError, ResultError),
                       interrupted="interrupted; finished bags are kept for a rerun with the same arguments")


def _evaluate(args: argparse.Namespace, tasks: list, failed: list, options: Any, settings: str,
              partials: Path, gate_classes: list[str], out: Path, report: Path | None) -> int:
    from sfnet_ros.tools.fleet.runner import run_fleet

    bar = tqdm(total=sum(t.frames for t in tasks), unit="frame", file=sys.stderr, desc=TOOL,
               disable=True if args.no_progress else None)

    def frames_done(frames: int) -> None:
        bar.update(frames)
    try:
        fleet = run_fleet(tasks, options, settings, partials, workers=args.workers, ray_address=args.ray,
                          ray_cpus=args.cpus_per_task, ray_gpus=args.gpus_per_task,
                          progress=frames_done)
    finally:
        bar.close()
    failed += fleet.failed
    if not fleet.results:
        reasons = "; ".join(f"{f['bag']}: {f['reason']}" for f in failed[:3])
        raise BagError(f"no bag could be evaluated ({len(failed)}): {reasons}")
    status = finish(args, fleet.results, failed, gate_classes, out, report, TOOL, {
        "wall_s": round(fleet.wall_s, 3), "workers": fleet.workers, "executor": fleet.executor,
        "reused_bags": fleet.reused,
        "fps": round(sum(r.frames for r in fleet.results) / fleet.wall_s, 3) if fleet.wall_s and not fleet.reused
        else None,
        "device": fleet.results[0].info.get("device"), "backend": fleet.results[0].info["models"][-1]["backend"]})
    # the output is complete: its bags' results are in <out>/partials now; results of these bags
    # kept from an interrupted run with other settings are superseded too
    for task in tasks:
        for stale in partials.glob(f"{task.identity}-*.npz"):
            stale.unlink(missing_ok=True)
    return status


def finish(args: argparse.Namespace, results: list[BagResult], failed: list[dict[str, str]], gate_classes: list[str],
           out: Path, report: Path | None, tool: str, speed: dict[str, Any]) -> int:
    from sfnet_ros.tools.fleet.summarize import summarize

    classes, ignore = _classes(results)
    _check_gate(gate_classes, [c["name"] for c in classes], results[0].counts.shape[0] == 2)
    summary = summarize(results, failed, classes, ignore, speed, worst=args.worst, uncertain=args.uncertain,
                        resample=args.resample, resamples=args.resamples, gate_classes=gate_classes,
                        max_drop=args.max_drop)
    markdown = write_outputs(out, summary, results, report, args.overwrite, tool)
    sys.stdout.write(markdown)
    for failure in failed:
        print(f"{tool}: failed: {failure['bag']}: {failure['reason']}", file=sys.stderr)
    return _exit_status(summary)


if __name__ == "__main__":
    sys.exit(main())
