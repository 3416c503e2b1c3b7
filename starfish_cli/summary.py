"""Sweep summaries: every report.json under a folder → summary.md, summary.csv and plots."""

import csv
import inspect
import json
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from starfish_cli.atomic import write_atomically, write_text_atomically
from starfish_cli.healing import HEALERS
from starfish_cli.pruning import PRUNERS

RECOVERY_TARGET = 0.97


def load_reports(root: Path) -> list[dict[str, Any]]:
    """Every finished run (one with accuracy) under `root`."""
    reports = []
    for path in sorted(Path(root).rglob("report.json")):
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if "accuracy" in report and "healer" in report:
            report["_path"] = str(path.parent)
            reports.append(report)
    return reports


def option_label(described: dict[str, Any], registry=HEALERS, shown_elsewhere=("name", "seed")) -> str:
    """A component's name, plus every option that differs from its default: `starfish[epochs=30]`."""
    name = described["name"]
    try:
        defaults = {k: p.default for k, p in inspect.signature(registry.get(name)).parameters.items()}
    except Exception:  # a report from a component this version no longer has
        defaults = {}
    changed = []
    for key, value in described.items():
        if key in shown_elsewhere or key not in defaults:
            continue
        default = list(defaults[key]) if isinstance(defaults[key], tuple) else defaults[key]
        if value != default:
            changed.append(f"{key}={value}")
    return f"{name}[{','.join(changed)}]" if changed else name


def mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def summarize(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Cells keyed by (pruner, pattern, sparsity) then healer label: mean/std over seeds."""
    groups: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for report in reports:
        pruner = report["pruner"]
        sparsity = report["sparsity"].get("prunable")
        row = (option_label(pruner, PRUNERS, ("name", "sparsity", "pattern")), pruner["pattern"],
               round(float(sparsity), 3))
        groups[row][option_label(report["healer"])].append(report)
    rows = {}
    for row, by_healer in sorted(groups.items()):
        cells = {}
        for label, runs in sorted(by_healer.items()):
            top1 = [r["accuracy"]["healed"]["top1"] for r in runs]
            recovery = [r["recovery"] for r in runs]
            seconds = [r.get("stages", {}).get("heal", {}).get("seconds", 0.0) for r in runs]
            cells[label] = {
                "top1": mean_std(top1), "recovery": mean_std(recovery), "heal_seconds": mean_std(seconds),
                "seeds": sorted(r["seed"] for r in runs),
                "labels_used": any(r["calibration"].get("labels_used") for r in runs),
                "healer": runs[0]["healer"]["name"],
            }
        dense = [r["accuracy"]["dense"]["top1"] for runs in by_healer.values() for r in runs]
        rows[row] = {"dense": mean_std(dense), "cells": cells}
    return rows


def _cell_text(cell: dict[str, Any]) -> str:
    (mean, std), (recovery, _) = cell["top1"], cell["recovery"]
    marker = " (labels)" if cell["labels_used"] else ""
    return f"{mean:.2f} ± {std:.2f} ({recovery:.3f}){marker}"


def table_rows(rows: dict[tuple, dict]) -> tuple[list[str], list[list[str]]]:
    labels = sorted({label for row in rows.values() for label in row["cells"]}, key=_healer_order)
    header = ["pruner", "pattern", "sparsity", "dense", *labels]
    body = []
    for (pruner, pattern, sparsity), row in rows.items():
        cells = [_cell_text(row["cells"][label]) if label in row["cells"] else "–" for label in labels]
        body.append([pruner, pattern, f"{sparsity:.2f}", f"{row['dense'][0]:.2f}", *cells])
    return header, body


def _healer_order(label: str) -> tuple:
    """none, norm, kd, supervised, starfish; variants after their healer, numbers in numeric order."""
    order = ["none", "norm", "kd", "supervised", "starfish"]
    name = label.split("[")[0]
    natural = tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", label))
    return (order.index(name) if name in order else len(order), natural)


def write_summary(root: Path, console: Console | None = None) -> dict[str, Path]:
    reports = load_reports(root)
    if not reports:
        from starfish_cli.errors import StarfishError

        raise StarfishError(f"no finished runs (report.json with accuracy) under {root}: run `starfish run -m …` first")
    rows = summarize(reports)
    header, body = table_rows(rows)
    root = Path(root)
    written = {"summary.md": root / "summary.md", "summary.csv": root / "summary.csv",
               "accuracy_vs_sparsity.png": root / "accuracy_vs_sparsity.png"}
    markdown = [
        f"Healed top-1 % (mean ± std over seeds) and, in brackets, recovery = healed ÷ dense top-1. "
        f"{len(reports)} runs. `(labels)`: the healer used labels.", "",
        "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
        *("| " + " | ".join(line) + " |" for line in body), "",
    ]
    write_text_atomically(written["summary.md"], "\n".join(markdown))
    _write_csv(written["summary.csv"], rows)
    plot_accuracy_vs_sparsity(rows, written["accuracy_vs_sparsity.png"])
    if _has_budget_sweep(rows):
        written["recovery_vs_time.png"] = root / "recovery_vs_time.png"
        plot_recovery_vs_time(rows, written["recovery_vs_time.png"])
    table = Table(title=f"starfish sweep: {root} ({len(reports)} runs) — healed top-1 % mean ± std (recovery)")
    for column in header:  # escape: `starfish[epochs=30]` is not rich markup
        table.add_column(escape(column), justify="left" if column in ("pruner", "pattern") else "right")
    for line in body:  # nor is `wanda[comparison=layer]`
        table.add_row(*map(escape, line))
    # a pipe or a log gets the whole table, not one cut to 80 columns
    console = console or Console()
    if not console.is_terminal:
        console = Console(width=max(120, 40 + 26 * (len(header) - 4)))
    console.print(table)
    return written


def _write_csv(path: Path, rows: dict[tuple, dict]) -> None:
    labels = sorted({label for row in rows.values() for label in row["cells"]}, key=_healer_order)
    fields = ["pruner", "pattern", "sparsity", "dense_top1"]
    for label in labels:
        fields += [f"{label}:top1_mean", f"{label}:top1_std", f"{label}:recovery_mean", f"{label}:seeds"]

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(fields)
            for (pruner, pattern, sparsity), row in rows.items():
                line = [pruner, pattern, sparsity, f"{row['dense'][0]:.4f}"]
                for label in labels:
                    cell = row["cells"].get(label)
                    line += ([f"{cell['top1'][0]:.4f}", f"{cell['top1'][1]:.4f}", f"{cell['recovery'][0]:.4f}",
                              len(cell["seeds"])] if cell else ["", "", "", ""])
                writer.writerow(line)

    write_atomically(path, write)


def _budget_swept(row: dict) -> set[str]:
    """Healers that a row holds at more than one setting (e.g. several `epochs`)."""
    names = [cell["healer"] for cell in row["cells"].values()]
    return {name for name in names if names.count(name) > 1}


def _has_budget_sweep(rows: dict[tuple, dict]) -> bool:
    return any(_budget_swept(row) for row in rows.values())


def _save(figure, path: Path) -> None:
    write_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))


def plot_accuracy_vs_sparsity(rows: dict[tuple, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(pruner, pattern) for pruner, pattern, _ in rows})
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False, sharey=True)
    for axis, (pruner, pattern) in zip(axes[0], panels):
        keys = sorted(k for k in rows if k[:2] == (pruner, pattern))
        labels = sorted({label for k in keys for label in rows[k]["cells"]}, key=_healer_order)
        for label in labels:
            points = [(k[2], rows[k]["cells"][label]) for k in keys if label in rows[k]["cells"]]
            axis.errorbar([p[0] for p in points], [c["top1"][0] for _, c in points],
                          yerr=[c["top1"][1] for _, c in points], marker="o", capsize=3, label=label)
        dense = sum(rows[k]["dense"][0] for k in keys) / len(keys)
        axis.axhline(dense, color="black", linestyle="--", linewidth=1, label=f"dense ({dense:.1f})")
        axis.set_title(f"{pruner} ({pattern})")
        axis.set_xlabel("sparsity of prunable weights")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("top-1 % (mean ± std over seeds)")
    axes[0][-1].legend(fontsize=8, loc="lower left")
    _save(figure, path)
    plt.close(figure)


def plot_recovery_vs_time(rows: dict[tuple, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    swept = [k for k, row in rows.items() if _budget_swept(row)]
    figure, axes = plt.subplots(1, len(swept), figsize=(5 * len(swept), 4), squeeze=False)
    for axis, key in zip(axes[0], swept):
        by_healer = defaultdict(list)
        swept_healers = _budget_swept(rows[key])
        for label, cell in rows[key]["cells"].items():
            if cell["healer"] not in swept_healers:
                continue
            by_healer[cell["healer"]].append((cell["heal_seconds"][0], cell["recovery"][0], cell["recovery"][1], label))
        for healer, points in sorted(by_healer.items()):
            points.sort()
            axis.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                          marker="o", capsize=3, label=healer)
            for seconds, recovery, _, label in points:
                epochs = label.split("epochs=")[1].split(",")[0].rstrip("]") if "epochs=" in label else "10"
                axis.annotate(f"{epochs} ep", (seconds, recovery), fontsize=7, xytext=(3, -9), textcoords="offset points")
        axis.axhline(RECOVERY_TARGET, color="grey", linestyle=":", label=f"{RECOVERY_TARGET:.0%} of dense")
        axis.set_xscale("log")
        axis.set_title(f"{key[0]} ({key[1]}) at sparsity {key[2]:.2f}")
        axis.set_xlabel("healing wall time, s (log)")
        axis.set_ylabel("recovery (healed ÷ dense top-1)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    _save(figure, path)
    plt.close(figure)
