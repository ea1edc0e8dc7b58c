"""``sfnet-fleet-merge``: fleet results written anywhere -> one output folder and report, exactly.

    sfnet-fleet-merge results/part1 results/part2 --out fleet

For teams whose own batch system runs ``sfnet-fleet-eval`` on shares of the bags: the totals are
sums of the per-frame confusion counts, so the merge equals one run over every bag. A bag found in
several inputs (the same bag, models and settings) counts once. The same output as
``sfnet-fleet-eval`` (and the same exit statuses); report and gate options may differ from the
runs', so one A/B result can be gated on other classes without evaluating again.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sfnet_core.cli.common import make_parser, run_command
from sfnet_core.errors import SFNetError
from sfnet_ros.tools.fleet.results import BagResult, ResultError, load_results
from sfnet_ros.tools.fleet_eval import check_outputs, finish, gate_classes_of, report_options

MERGE_TOOL = "sfnet-fleet-merge"

MERGE_DESCRIPTION = """Merge fleet results written anywhere (other machines, a batch system: each ran
sfnet-fleet-eval on its share of the bags) into one output folder and report, exactly: the totals
are sums of the per-frame confusion counts.

  sfnet-fleet-merge results/part1 results/part2 --out fleet

Each INPUT is an sfnet-fleet-eval output folder, a folder of partial results (.npz) or one .npz."""


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(MERGE_TOOL, MERGE_DESCRIPTION)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="output folders, folders of .npz, or .npz files")
    parser.add_argument("--out", required=True, help="the new output folder")
    report_options(parser)
    return parser


def _partials_of(entry: str) -> tuple[list[Path], list[dict[str, str]]]:
    path = Path(entry)
    if path.is_file() and path.suffix == ".npz":
        return [path], []
    if not path.is_dir():
        raise ResultError(f"{entry}: not a fleet output folder, a folder of .npz results or a .npz file")
    folder = path / "partials" if (path / "partials").is_dir() else path
    found = sorted(folder.glob("*.npz"))
    if not found:
        raise ResultError(f"{entry}: holds no fleet result (.npz)")
    failed: list[dict[str, str]] = []
    summary = path / "summary.json"
    if summary.is_file():
        try:
            failed = list(json.loads(summary.read_text(encoding="utf-8")).get("failed", []))
        except (OSError, ValueError):
            raise ResultError(f"{summary}: not readable JSON") from None
    return found, failed


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    gate_classes = gate_classes_of(args, parser)

    def run() -> int:
        paths: list[Path] = []
        failed: list[dict[str, str]] = []
        for entry in args.inputs:
            found, failures = _partials_of(entry)
            paths += found
            failed += failures
        out, report = check_outputs(args, list(args.inputs), MERGE_TOOL)
        results = load_results(paths)
        unique: dict[str, BagResult] = {}
        for path, result in zip(paths, results):
            if result.identity in unique:
                print(f"{MERGE_TOOL}: {path}: the same bag as another input ({result.bag}); counted once",
                      file=sys.stderr)
                continue
            unique[result.identity] = result
        merged = list(unique.values())
        bag_seconds = sum(r.wall_s for r in merged)
        frames = sum(r.frames for r in merged)
        speed = {"wall_s": round(bag_seconds, 3), "workers": None, "executor": "merged",
                 "fps": round(frames / bag_seconds, 3) if bag_seconds else None,
                 "device": merged[0].info.get("device"), "backend": merged[0].info["models"][-1]["backend"],
                 "note": "wall_s: the bags' evaluation times added up (they may have run in parallel)"}
        return finish(args, merged, failed, gate_classes, out, report, MERGE_TOOL, speed)

    return run_command(MERGE_TOOL, run, (SFNetError, ResultError))


if __name__ == "__main__":
    sys.exit(main())
