"""What the paper's setting costs here: prune → heal → eval of a random-init timm DeiT on an
ImageFolder of ImageNet-like JPEGs, per stage, extrapolated to 5,000 calibration + 50,000
evaluation images.

    python scripts/scale_rehearsal.py [--model deit_base_patch16_224] [--calib 32] [--eval 64]
        [--folder DIR (made if missing)] [--classes 10] [--epochs 1] [--device auto] [--out DIR]

It runs `starfish run` on the folder as a user would and reads the run's report: seconds per image
of every stage, peak host (or GPU) memory, and the share of evaluation time spent waiting for
images (wall time minus the models' own forward time).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PAPER = {"calibration": 5_000, "eval": 50_000}


def write_folder(root: Path, calib: int, evaluate: int, classes: int) -> Path:
    """train/ and val/ class folders of noisy 500×375 JPEGs (about ImageNet's median size and bytes)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", calib), ("val", evaluate)):
        for index in range(count):
            folder = root / split / f"n{index % classes:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            smooth = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8).repeat(32, 0).repeat(32, 1)[:375, :500]
            noisy = np.clip(smooth + rng.normal(0, 24, smooth.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(folder / f"{split}_{index:06d}.JPEG", quality=90)
    return root


def rehearse(args) -> dict:
    folder = args.folder or Path(tempfile.mkdtemp(prefix="starfish-rehearsal-")) / "imagenet"
    if not (folder / "val").is_dir():
        write_folder(folder, args.calib, args.eval, args.classes)
    run_dir = args.out / "run"
    command = [sys.executable, "-m", "starfish_cli", "run", f"model.name={args.model}", "model.pretrained=false",
               "data=imagefolder", f"data.path={folder}", f"calib.count={args.calib}", "calib.balanced=false",
               f"healer.epochs={args.epochs}", f"eval.max_images={args.eval}", f"eval.batch_size={args.batch_size}",
               f"device={args.device}", "skip_finished=false", f"hydra.run.dir={run_dir}", *args.overrides]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    return summarize(json.loads((run_dir / "report.json").read_text()), args)


def summarize(report: dict, args) -> dict:
    stages = report["stages"]
    accuracy = report["accuracy"]
    model_seconds = sum(accuracy["images"] / accuracy[name]["images_per_second"] for name in ("dense", "pruned", "healed"))
    images = {"calibration": args.calib, "prune": args.calib, "heal": args.calib * args.epochs, "eval": args.eval}
    paper = {"calibration": PAPER["calibration"], "prune": PAPER["calibration"],
             "heal": PAPER["calibration"] * 10, "eval": PAPER["eval"]}  # the reference recipe: 10 epochs
    rows = {}
    for stage in ("calibration", "prune", "heal", "eval"):
        entry = stages[stage]
        per_image = entry["seconds"] / images[stage]
        rows[stage] = {
            "images": images[stage], "seconds": entry["seconds"], "seconds_per_image": per_image,
            "peak_memory_mb": entry["peak_memory_mb"], "memory_kind": entry["memory_kind"],
            "waiting_for_data": max(0.0, 1 - model_seconds / entry["seconds"]) if stage == "eval" else None,
            "paper_images": paper[stage], "paper_hours": per_image * paper[stage] / 3600,
        }
    return {"model": args.model, "device": report["environment"]["device"], "stages": rows,
            "paper_total_hours": sum(row["paper_hours"] for row in rows.values())}


def markdown(summary: dict) -> str:
    lines = [f"`{summary['model']}` (random init) on {summary['device']}", "",
             "| stage | images here | s/image | peak memory MB | waiting for data | paper's images | extrapolated h |",
             "|---|---|---|---|---|---|---|"]
    for stage, row in summary["stages"].items():
        waiting = f"{row['waiting_for_data']:.0%}" if row["waiting_for_data"] is not None else "–"
        lines.append(f"| {stage} | {row['images']} | {row['seconds_per_image']:.3f} | {row['peak_memory_mb']:.0f} "
                     f"({row['memory_kind']}) | {waiting} | {row['paper_images']:,} | {row['paper_hours']:.2f} |")
    lines.append(f"| total | | | | | | {summary['paper_total_hours']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_base_patch16_224")
    parser.add_argument("--calib", type=int, default=32)
    parser.add_argument("--eval", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--folder", type=Path, help="an ImageFolder with train/ and val/ (made if missing)")
    parser.add_argument("--out", type=Path, default=Path("outputs/rehearsal"))
    parser.add_argument("overrides", nargs="*", help="more starfish overrides, e.g. healer.batch_size=16")
    args = parser.parse_args()
    summary = rehearse(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rehearsal.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = markdown(summary)
    (args.out / "rehearsal.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
