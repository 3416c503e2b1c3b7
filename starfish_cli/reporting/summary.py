"""Sweep summaries: every report.json under a folder → summary.md, summary.csv and plots."""

import csv
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from starfish_cli.runtime.atomic import write_atomically, write_text_atomically
from starfish_cli.runtime.errors import StarfishError
from starfish_cli.reporting.report import is_perplexity

RECOVERY_TARGET = 0.97


@dataclass(frozen=True)
class Headline:
    """What a sweep compares across healers: healed top-1 for classifiers, healed perplexity for causal
    LMs, each with its ratio to dense in brackets."""

    key: str  # the accuracy entry of report.json
    title: str
    unit: str  # after a value in plot titles
    ratio: str  # the bracket's name in csv columns (and, with spaces, in table headers)
    ratio_text: str
    ratio_axis: str
    ratio_target: float | None  # a line on the recovery-vs-time plot


TOP1 = Headline("top1", "top-1 %", "%", "recovery", "recovery = healed ÷ dense top-1",
                "recovery (healed ÷ dense top-1)", RECOVERY_TARGET)
PERPLEXITY = Headline("perplexity", "perplexity", " perplexity", "vs_dense",
                      "healed ÷ dense perplexity (lower is better)", "healed ÷ dense perplexity", None)


def headline_of(reports: list[dict[str, Any]]) -> Headline:
    kinds = {is_perplexity(report) for report in reports}
    if len(kinds) > 1:
        raise StarfishError("the folder mixes classifier and language-model runs: summarize each under its own folder")
    return PERPLEXITY if kinds == {True} else TOP1


def healed_ratio(report: dict[str, Any], headline: Headline) -> float:
    """Healed ÷ dense of the headline metric (for top-1, the report's recovery: the same division)."""
    accuracy = report["accuracy"]
    return accuracy["healed"][headline.key] / accuracy["dense"][headline.key]


def heal_seconds(report: dict[str, Any]) -> float:
    """Healing wall time of a run; 0 where the report has none (e.g. written before stages were timed)."""
    return float(report.get("stages", {}).get("heal", {}).get("seconds") or 0.0)


def healing_was_timed(report: dict[str, Any]) -> bool:
    """Whether a run's heal time measures healing: a positive time, and steps taken where the report counts them
    (healer=none times a no-op: microseconds that would only stretch a log time axis)."""
    return heal_seconds(report) > 0 and report.get("healing", {}).get("steps", 1) > 0


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


def labels_of(report: dict[str, Any]) -> tuple[str, str]:
    """(pruner label, healer label) as the run wrote them, e.g. `wanda[comparison=layer]`,
    `starfish[epochs=30]`; reports of version 0.1.0 carry none and get the plain names."""
    labels = report.get("labels", {})
    return labels.get("pruner", report["pruner"]["name"]), labels.get("healer", report["healer"]["name"])


def mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def row_sparsity(report: dict[str, Any]) -> float:
    """The sparsity a table row stands for: an unstructured pruner's target (seeds whose per-block
    allocation lands a hair apart, e.g. OWL's 0.8995 and 0.9004, share a row), else as measured."""
    target = report["pruner"].get("sparsity")
    if report["pruner"].get("pattern") == "unstructured" and isinstance(target, int | float):
        return round(float(target), 3)
    return round(float(report["sparsity"]["prunable"]), 3)


def summarize(reports: list[dict[str, Any]], headline: Headline | None = None) -> dict[str, Any]:
    """Cells keyed by (pruner, pattern, sparsity) then healer label: mean/std over seeds of the headline
    metric (`value`, `ratio`) and of top-1 and recovery."""
    headline = headline or headline_of(reports)
    groups: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for report in reports:
        pruner_label, healer_label = labels_of(report)
        row = (pruner_label, report["pruner"]["pattern"], row_sparsity(report))
        groups[row][healer_label].append(report)
    rows = {}
    for row, by_healer in sorted(groups.items()):
        cells = {}
        for label, runs in sorted(by_healer.items()):
            top1 = [r["accuracy"]["healed"]["top1"] for r in runs]
            recovery = [r["recovery"] for r in runs]
            seconds = [heal_seconds(r) for r in runs]
            timed = [r for r in runs if healing_was_timed(r)]
            speedups = [speedup for speedup in map(healed_speedup, runs) if speedup is not None]
            cells[label] = {
                "value": mean_std([r["accuracy"]["healed"][headline.key] for r in runs]),
                "ratio": mean_std([healed_ratio(r, headline) for r in runs]),
                "top1": mean_std(top1), "recovery": mean_std(recovery), "heal_seconds": mean_std(seconds),
                "seeds": sorted(r["seed"] for r in runs),
                "labels_used": any(r["calibration"].get("labels_used") for r in runs),
                "healer": runs[0]["healer"]["name"],
                "epochs": runs[0]["healer"].get("epochs"),
                "speedup": mean_std(speedups) if speedups else None,
                "parameters": runs[0].get("sparsity", {}).get("remaining_parameters"),
                # the seeds with a heal time: both axes of recovery_vs_heal_time.png, from the same runs
                "timed": {"seconds": mean_std([heal_seconds(r) for r in timed]),
                          "ratio": mean_std([healed_ratio(r, headline) for r in timed])} if timed else None,
            }
        dense = [r["accuracy"]["dense"][headline.key] for runs in by_healer.values() for r in runs]
        rows[row] = {"dense": mean_std(dense), "cells": cells}
    return rows


def healed_speedup(report: dict[str, Any]) -> float | None:
    """Healed images/s ÷ dense at the evaluation's batch, from the report's speed section (eval.speed)."""
    speed = report.get("speed")
    if not speed:
        return None
    return speed["models"]["healed"]["vs_dense"][str(speed["batch_sizes"][-1])]


def _cell_text(cell: dict[str, Any]) -> str:
    (mean, std), (recovery, _) = cell["value"], cell["ratio"]
    marker = " (labels)" if cell["labels_used"] else ""
    spread = f" ± {std:.2f}" if len(cell["seeds"]) > 1 else ""  # one seed has no spread to show
    return f"{mean:.2f}{spread} ({recovery:.3f}){marker}"


def table_rows(rows: dict[tuple, dict]) -> tuple[list[str], list[list[str]]]:
    labels = healer_labels(rows)
    header = ["pruner", "pattern", "sparsity", "dense", *labels]
    body = []
    for (pruner, pattern, sparsity), row in rows.items():
        cells = [_cell_text(row["cells"][label]) if label in row["cells"] else "–" for label in labels]
        body.append([pruner, pattern, f"{sparsity:.2f}", f"{row['dense'][0]:.2f}", *cells])
    return header, body


def _natural(label: str) -> tuple:
    """Sort key that puts numbers in numeric order: starfish[epochs=30] before starfish[epochs=100]."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", label))


def speed_table(rows: dict[tuple, dict], headline: Headline = TOP1) -> list[str]:
    """summary.md's trade-off table: the healed headline metric beside measured speed and size, where runs measured it."""
    lines = []
    for (pruner, pattern, sparsity), row in rows.items():
        for label, cell in row["cells"].items():
            if cell["speedup"]:
                mean, std = cell["speedup"]
                parameters = f"{cell['parameters']:,}" if cell["parameters"] else "–"
                lines.append(f"| {pruner} | {pattern} | {sparsity:.2f} | {label} | {_cell_text(cell)} | "
                             f"{mean:.2f}" + (f" ± {std:.2f}" if len(cell["seeds"]) > 1 else "") + f" | {parameters} |")
    if not lines:
        return []
    return ["Speed: healed images/s ÷ dense at the evaluation's batch (measured in each run's process), and the "
            "parameters that remain.", "",
            f"| pruner | pattern | sparsity | healer | healed {headline.title} ({headline.ratio.replace('_', ' ')}) "
            "| images/s ÷ dense | parameters |",
            "|---|---|---|---|---|---|---|", *lines, ""]


def healer_labels(rows: dict[tuple, dict]) -> list[str]:
    """Every healer label of the table, by name, variants after their healer."""
    return sorted({label for row in rows.values() for label in row["cells"]}, key=_natural)


def write_summary(root: Path, console: Console | None = None) -> dict[str, Path]:
    reports = load_reports(root)
    if not reports:
        raise StarfishError(f"no finished runs (report.json with accuracy) under {root}: run `starfish run -m …` first")
    headline = headline_of(reports)
    rows = summarize(reports, headline)
    header, body = table_rows(rows)
    root = Path(root)
    written = {"summary.md": root / "summary.md", "summary.csv": root / "summary.csv",
               "accuracy_vs_sparsity.png": root / "accuracy_vs_sparsity.png"}
    markdown = [
        f"Healed {headline.title} (mean ± std over seeds) and, in brackets, {headline.ratio_text}. "
        f"{len(reports)} runs. `(labels)`: the healer used labels.", "",
        "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
        *("| " + " | ".join(line) + " |" for line in body), "",
    ]
    markdown += speed_table(rows, headline)
    write_text_atomically(written["summary.md"], "\n".join(markdown))
    _write_csv(written["summary.csv"], rows, headline)
    plot_accuracy_vs_sparsity(rows, written["accuracy_vs_sparsity.png"], headline)
    if any(cell["speedup"] for row in rows.values() for cell in row["cells"].values()):
        written["accuracy_vs_speed.png"] = root / "accuracy_vs_speed.png"
        plot_accuracy_vs_speed(rows, written["accuracy_vs_speed.png"], headline)
    if _has_budget_sweep(rows):
        written["recovery_vs_time.png"] = root / "recovery_vs_time.png"
        plot_recovery_vs_time(rows, written["recovery_vs_time.png"], headline)
    if any(cell["timed"] for row in rows.values() for cell in row["cells"].values()):
        written["recovery_vs_heal_time.png"] = root / "recovery_vs_heal_time.png"
        plot_recovery_vs_heal_time(rows, written["recovery_vs_heal_time.png"], headline)
    table = Table(title=f"starfish sweep: {root} ({len(reports)} runs) — healed {headline.title} mean ± std "
                        f"({headline.ratio.replace('_', ' ')})")
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


def _write_csv(path: Path, rows: dict[tuple, dict], headline: Headline = TOP1) -> None:
    labels = healer_labels(rows)
    key = headline.key
    fields = ["pruner", "pattern", "sparsity", f"dense_{key}"]
    for label in labels:
        fields += [f"{label}:{key}_mean", f"{label}:{key}_std", f"{label}:{headline.ratio}_mean", f"{label}:seeds",
                   f"{label}:heal_seconds_mean"]

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(fields)
            for (pruner, pattern, sparsity), row in rows.items():
                line = [pruner, pattern, sparsity, f"{row['dense'][0]:.4f}"]
                for label in labels:
                    cell = row["cells"].get(label)
                    std = f"{cell['value'][1]:.4f}" if cell and len(cell["seeds"]) > 1 else ""
                    seconds = f"{cell['timed']['seconds'][0]:.2f}" if cell and cell["timed"] else ""
                    line += ([f"{cell['value'][0]:.4f}", std, f"{cell['ratio'][0]:.4f}", len(cell["seeds"]), seconds]
                             if cell else ["", "", "", "", ""])
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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colours(labels: list[str]) -> dict[str, Any]:
    """One colour per label, the same in every panel of every plot of the summary."""
    plt = _pyplot()
    palette = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    return {label: palette(i % palette.N) for i, label in enumerate(labels)}


def _shared_legend(figure, axes) -> None:
    """One legend for the whole figure, below the panels, with every label once."""
    handles = {}
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    figure.legend(list(handles.values()), list(handles), loc="lower center", fontsize=8,
                  ncol=min(len(handles), 6), bbox_to_anchor=(0.5, -0.02 - 0.05 * ((len(handles) - 1) // 6)))
    figure.tight_layout(rect=(0, 0.08 + 0.05 * ((len(handles) - 1) // 6), 1, 1))


def plot_accuracy_vs_sparsity(rows: dict[tuple, dict], path: Path, headline: Headline = TOP1) -> None:
    plt = _pyplot()
    panels = sorted({(pruner, pattern) for pruner, pattern, _ in rows})
    labels = healer_labels(rows)
    colours = _colours(labels)
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False, sharey=True)
    for axis, (pruner, pattern) in zip(axes[0], panels):
        keys = sorted(k for k in rows if k[:2] == (pruner, pattern))
        for label in labels:
            points = [(k[2], rows[k]["cells"][label]) for k in keys if label in rows[k]["cells"]]
            if points:
                axis.errorbar([p[0] for p in points], [c["value"][0] for _, c in points],
                              yerr=[c["value"][1] for _, c in points], marker="o", capsize=3, label=label,
                              color=colours[label])
        dense = sum(rows[k]["dense"][0] for k in keys) / len(keys)
        axis.axhline(dense, color="black", linestyle="--", linewidth=1, label="dense")
        axis.set_title(f"{pruner} ({pattern}), dense {dense:.1f}{headline.unit}")
        axis.set_xlabel("sparsity of prunable weights")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{headline.title} (mean ± std over seeds)")
    _shared_legend(figure, axes[0])
    _save(figure, path)
    plt.close(figure)


def plot_recovery_vs_time(rows: dict[tuple, dict], path: Path, headline: Headline = TOP1) -> None:
    plt = _pyplot()
    swept = [k for k, row in rows.items() if _budget_swept(row)]
    healers = sorted({cell["healer"] for k in swept for cell in rows[k]["cells"].values()})
    colours = _colours(healers)
    figure, axes = plt.subplots(1, len(swept), figsize=(5 * len(swept), 4.5), squeeze=False)
    for axis, key in zip(axes[0], swept):
        by_healer = defaultdict(list)
        swept_healers = _budget_swept(rows[key])
        for cell in rows[key]["cells"].values():
            if cell["healer"] in swept_healers:
                by_healer[cell["healer"]].append((cell["heal_seconds"][0], cell["ratio"][0],
                                                  cell["ratio"][1], cell["epochs"]))
        for healer, points in sorted(by_healer.items()):
            points.sort()
            axis.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                          marker="o", capsize=3, label=healer, color=colours[healer])
            for seconds, recovery, _, epochs in points:
                if epochs is not None:
                    axis.annotate(f"{epochs} ep", (seconds, recovery), fontsize=7, xytext=(3, -9),
                                  textcoords="offset points")
        _time_panel(axis, key, headline)
    _shared_legend(figure, axes[0])
    _save(figure, path)
    plt.close(figure)


def _time_panel(axis, key: tuple, headline: Headline) -> None:
    """The frame of a ratio-vs-healing-time panel: the target line, a log time axis, the row as title."""
    if headline.ratio_target is not None:
        axis.axhline(headline.ratio_target, color="grey", linestyle=":", label=f"{headline.ratio_target:.0%} of dense")
    axis.set_xscale("log")
    axis.set_title(f"{key[0]} ({key[1]}) at sparsity {key[2]:.2f}")
    axis.set_xlabel("healing wall time, s (log)")
    axis.set_ylabel(headline.ratio_axis)
    axis.grid(alpha=0.3)


def budget_group(label: str) -> str:
    """A healer label without its `epochs=…` option: starfish, starfish[epochs=30] and starfish[epochs=100] are
    one budget curve, starfish[epochs=30,lr=0.001] and starfish[lr=0.001] another."""
    return re.sub(r",epochs=[^,\]]+|(?<=\[)epochs=[^,\]]+,?", "", label).replace("[]", "")


def plot_recovery_vs_heal_time(rows: dict[tuple, dict], path: Path, headline: Headline = TOP1) -> None:
    """The headline ratio against healing wall time, a panel per row of the table that has timed runs: a point per
    healer label (mean ± std over the seeds with a heal time, in both axes, the label's colour of the other plots),
    the budgets of one healer setting (`budget_group`) joined in order of time."""
    plt = _pyplot()
    labels = healer_labels(rows)
    colours = _colours(labels)
    panels = [key for key, row in rows.items() if any(cell["timed"] for cell in row["cells"].values())]
    columns = min(len(panels), 3)
    grid_rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(grid_rows, columns, figsize=(5 * columns, 4.5 * grid_rows), squeeze=False)
    used = list(axes.ravel()[:len(panels)])
    for axis in axes.ravel()[len(panels):]:
        axis.set_visible(False)
    for axis, key in zip(used, panels):
        timed = {label: rows[key]["cells"][label]["timed"] for label in labels
                 if label in rows[key]["cells"] and rows[key]["cells"][label]["timed"]}
        curves = defaultdict(list)
        for label, point in timed.items():
            curves[budget_group(label)].append((point["seconds"][0], point["ratio"][0]))
        for points in curves.values():
            if len(points) > 1:
                points.sort()
                axis.plot([p[0] for p in points], [p[1] for p in points], color="grey", linewidth=1, alpha=0.7, zorder=1)
        for label, point in timed.items():
            axis.errorbar(point["seconds"][0], point["ratio"][0], xerr=point["seconds"][1], yerr=point["ratio"][1],
                          marker="o", capsize=3, linestyle="none", color=colours[label], label=label, zorder=2)
        _time_panel(axis, key, headline)
    _shared_legend(figure, used)
    _save(figure, path)
    plt.close(figure)


def plot_accuracy_vs_speed(rows: dict[tuple, dict], path: Path, headline: Headline = TOP1) -> None:
    """The healed headline metric against measured speed (healed ÷ dense images/s at the evaluation's batch): one point
    per pruning setting and healer, a colour per healer, a marker per pruner, so that structured and
    unstructured results sit on one trade-off plot."""
    plt = _pyplot()
    labels = healer_labels(rows)
    colours = _colours(labels)
    pruners = sorted({pruner.split("[")[0] for pruner, _, _ in rows})
    markers = dict(zip(pruners, "osD^v<>PX*"))
    figure, axis = plt.subplots(figsize=(6.5, 4.8))
    for (pruner, pattern, sparsity), row in rows.items():
        for label, cell in row["cells"].items():
            if not cell["speedup"]:
                continue
            axis.errorbar(cell["speedup"][0], cell["value"][0], xerr=cell["speedup"][1], yerr=cell["value"][1],
                          marker=markers.get(pruner.split("[")[0], "o"), color=colours[label], capsize=2,
                          linestyle="none", label=label)
            axis.annotate(pruner if pattern == "unstructured" else f"{pruner} {pattern}", (cell["speedup"][0],
                          cell["value"][0]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    dense = [row["dense"][0] for row in rows.values()]
    axis.axhline(sum(dense) / len(dense), color="black", linestyle="--", linewidth=1, label="dense")
    axis.axvline(1.0, color="grey", linestyle=":", linewidth=1)
    axis.set_xlabel("images/s ÷ dense (measured, evaluation batch)")
    axis.set_ylabel(f"healed {headline.title} (mean ± std over seeds)")
    axis.grid(alpha=0.3)
    _shared_legend(figure, [axis])
    _save(figure, path)
    plt.close(figure)
