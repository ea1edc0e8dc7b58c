"""Does choosing frames by uncertainty beat a fixed stride? The data loop, measured (issue 20).

For each seed: a seed model is trained from scratch on a small labelled set (one generated drive);
from a pool drive of the same kind, ``--budget`` frames are chosen twice, by the seed model's
uncertainty (``sfnet-extract --select uncertainty``; and again with ``--focus-classes`` the rare class) and by a
fixed stride (``--select stride``); the generated ground truth "labels" them (standing in for a
person); each choice is added to the seed set and the seed model fine-tuned on it for the same
iterations; both are evaluated on held-out drives with ``sfnet-fleet-eval``. Everything runs
through the project's command-line tools, as a team would run them.

Printed: per seed, mIoU and the IoU of ``--rare`` (default person, the class the generated
streets show least: its pixel share is printed too); over the seeds, mean and spread of mIoU and
every class's IoU for the seed model, stride, uncertainty and focus; and each choice's difference
to stride per seed. The result is what it is: stated as measured, whichever way it goes.

    .venv/bin/python bench/data_loop.py                      # 3 seeds, 64x128, about 25 minutes on 2 cores
    .venv/bin/python bench/data_loop.py --seeds 1 --iterations 20 --finetune 10   # a smoke run
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def tool(name: str, *args: object, cwd: Path) -> str:
    proc = subprocess.run([str(BIN / name), *map(str, args)], cwd=cwd, capture_output=True, text=True)
    if proc.returncode not in (0, 1):  # sfnet-fleet-eval: 0; nothing here gates
        sys.exit(f"bench/data_loop.py: {name} {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                 f"{proc.stderr[-3000:]}")
    return proc.stdout


def recipe(work: Path, root: str, iterations: int, size: tuple[int, int], init_from: str | None) -> Path:
    text = {
        "model": {"name": "sfnet_resnet18", "aux": True, "init_from": init_from},
        "data": {"kind": "folder", "root": root, "classes": f"{root}/classes.yaml", "train_split": "train",
                 "val_split": "val", "crop_size": list(size), "scale_range": [0.75, 1.25], "workers": 0},
        "loss": {"ohem": False},
        "optim": {"lr": 0.02},
        "schedule": {"iterations": iterations, "batch_size": 4, "warmup_iters": min(10, iterations // 4)},
        "runtime": {"device": "cpu", "progress": False, "log_interval": 1000, "image_interval": 1_000_000,
                    "checkpoint_interval": 1_000_000, "eval_interval": 0},
    }
    path = work / f"recipe_{root}_{iterations}.yaml"
    path.write_text(yaml.safe_dump(text, sort_keys=False))
    return path


def merge(work: Path, seed_data: str, chosen: str, out: str) -> None:
    """The seed set plus the chosen frames (in its train split), as one dataset folder."""
    shutil.copytree(work / seed_data, work / out, ignore=shutil.ignore_patterns(".sfnet-manifest.json"))
    for folder in ("images", "labels"):
        for path in (work / chosen / folder / "train").glob("*.png"):
            shutil.copy(path, work / out / folder / "train" / f"pool_{path.name}")


def evaluate(work: Path, checkpoint: str, out: str) -> dict[str, float]:
    """mIoU (key "mIoU") and the IoU of every class the held-out drives or the predictions hold."""
    tool("sfnet-fleet-eval", "--bag", "heldout", "--camera", "/front/image_raw:/front/labels", "--checkpoint",
         checkpoint, "--out", out, "--no-progress", "--backend", "torch", cwd=work)
    overall = json.loads((work / out / "summary.json").read_text())["overall"]
    return {"mIoU": overall["miou"] or 0.0, **{k: v for k, v in overall["per_class_iou"].items() if v is not None}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--size", default="64x128", help="HEIGHTxWIDTH of the drives")
    parser.add_argument("--iterations", type=int, default=300, help="seed model's training iterations")
    parser.add_argument("--finetune", type=int, default=100, help="fine-tuning iterations (both choices)")
    parser.add_argument("--budget", type=int, default=10, help="frames chosen from the pool")
    parser.add_argument("--rare", default="person", help="the rare class reported apart")
    parser.add_argument("--no-focus", dest="focus", action="store_false",
                        help="leave out the third choice: uncertainty over the pixels predicted as --rare only")
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    sys.path.insert(0, str(REPO))
    from sfnet_ros.tools.fleet.summarize import cpu_name
    from sfnet_ros.tools.synthetic_bag import write_synthetic_bag

    work = Path(tempfile.mkdtemp(prefix="sfnet_data_loop_"))
    rows = []
    try:
        for i in range(2):
            write_synthetic_bag(work / "heldout" / f"drive{i}.mcap", 30, height, width, seed=900 + i)
        share = _class_share(work / "heldout", args.rare)
        for seed in range(args.seeds):
            write_synthetic_bag(work / f"seed{seed}.mcap", 24, height, width, seed=100 + seed)
            write_synthetic_bag(work / f"pool{seed}.mcap", 120, height, width, seed=500 + seed)
            seed_data = f"seed_data{seed}"
            tool("sfnet-extract", "--bag", f"seed{seed}.mcap", "--image-topic", "/front/image_raw", "--label-topic",
                 "/front/labels", "--out", seed_data, "--val-fraction", "0.25", "--no-progress", cwd=work)
            base = f"runs/seed{seed}"
            tool("sfnet-train", "--config", recipe(work, seed_data, args.iterations, (height, width), None), "--out",
                 base, "--no-progress", f"runtime.seed={seed}", cwd=work)
            result = {"seed": seed, "seed_model": evaluate(work, f"{base}/last.pt", f"eval_seed{seed}")}
            for method in ("stride", "uncertainty", "focus")[:3 if args.focus else 2]:
                chosen = f"{method}{seed}"
                select = ["--select", "stride" if method == "stride" else "uncertainty", "--budget", args.budget]
                if method != "stride":
                    select += ["--checkpoint", f"{base}/last.pt", "--min-gap", "0.5"]
                    select += ["--focus-classes", args.rare] if method == "focus" else []
                tool("sfnet-extract", "--bag", f"pool{seed}.mcap", "--image-topic", "/front/image_raw",
                     "--label-topic", "/front/labels", "--out", chosen, "--split", "train", "--no-progress",
                     *select, cwd=work)
                merge(work, seed_data, chosen, f"{chosen}_data")
                tuned = f"runs/{chosen}"
                tool("sfnet-train", "--config", recipe(work, f"{chosen}_data", args.finetune, (height, width),
                                                       f"{base}/last.pt"),
                     "--out", tuned, "--no-progress", f"runtime.seed={seed}", cwd=work)
                result[method] = evaluate(work, f"{tuned}/last.pt", f"eval_{chosen}")
            rows.append(result)
            print(f"seed {seed}: " + ", ".join(f"{k} mIoU {v['mIoU']:.3f} {args.rare} {v[args.rare]:.3f}"
                                               for k, v in result.items() if k != "seed"), flush=True)
        _report(rows, args, share, cpu_name())
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _class_share(folder: Path, name: str) -> float:
    from sfnet_core.data.classes import ClassTable
    from sfnet_ros.tools.bag_io import BagReader, decode_labels

    index = ClassTable.cityscapes().index(name)
    hits = total = 0
    for bag in sorted(folder.glob("*.mcap")):
        with BagReader(bag) as reader:
            for topic, msgtype, _, _, msg in reader.decoded_cdr_messages(["/front/labels"]):
                label = decode_labels(msg, msgtype, topic)
                hits += int((label == index).sum())
                total += int((label != 255).sum())
    return hits / max(total, 1)


def _report(rows: list[dict], args: argparse.Namespace, share: float, cpu: str) -> None:
    arms = [key for key in rows[0] if key != "seed"]
    print(f"\ndata loop: {len(rows)} seed(s), {args.size}, seed model {args.iterations} iterations from scratch on "
          f"18 labelled frames, +{args.budget} pool frames each way, {args.finetune} fine-tuning iterations; "
          f"held-out: 2 drives x 30 frames ({args.rare}: {100 * share:.2f}% of their labelled pixels); "
          f"focus = uncertainty over the pixels predicted as {args.rare}; CPU {cpu}")
    print("mean ± standard deviation over the seeds, IoU in %")
    metrics = [m for m in rows[0]["seed_model"] if all(m in r[key] for r in rows for key in arms)]
    print("| | " + " | ".join(metrics) + " |\n|---|" + "---:|" * len(metrics))

    def spread(values: list[float]) -> str:
        return f" ± {statistics.stdev(values) * 100:.1f}" if len(values) > 1 else ""

    for key in arms:
        cells = [f"{100 * statistics.mean(r[key][m] for r in rows):.1f}{spread([r[key][m] for r in rows])}"
                 for m in metrics]
        print(f"| {key} | " + " | ".join(cells) + " |")
    for key in arms[2:]:
        for metric in ("mIoU", args.rare):
            deltas = [r[key][metric] - r["stride"][metric] for r in rows]
            print(f"{key} - stride, {metric}, per seed: {', '.join(f'{100 * d:+.1f}' for d in deltas)} pt")


if __name__ == "__main__":
    sys.exit(main())
