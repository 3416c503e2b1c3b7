"""Sweep summaries: every report.json under a folder → summary.md, summary.csv and plots."""

import csv
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from starfish_cli.runtime.atomic import write_atomically, write_text_atomically
from starfish_cli.runtime.errors import StarfishError
from starfish_cli.reporting.plots import (has_budget_sweep, plot_accuracy_vs_sparsity, plot_accuracy_vs_speed,
                                          plot_healing_curves, plot_recovery_vs_heal_time, plot_recovery_vs_time)
from starfish_cli.reporting.report import is_perplexity
from starfish_cli.reporting.rows import (PERPLEXITY, TOP1, HealerCell, Headline, MeanStd, Rows, SummaryRow,
                                         TimedPoint, healer_labels)

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


def summarize(reports: list[dict[str, Any]], headline: Headline | None = None) -> Rows:
    """Rows keyed by (pruner, pattern, sparsity), each with a cell per healer label: mean/std over seeds of the
    headline metric (`value`, `ratio`) and of top-1 and recovery."""
    headline = headline or headline_of(reports)
    groups: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for report in reports:
        pruner_label, healer_label = labels_of(report)
        row = (pruner_label, report["pruner"]["pattern"], row_sparsity(report))
        groups[row][healer_label].append(report)
    rows = {}
    for row, by_healer in sorted(groups.items()):
        cells = {label: _cell(runs, headline) for label, runs in sorted(by_healer.items())}
        dense = [r["accuracy"]["dense"][headline.key] for runs in by_healer.values() for r in runs]
        everyone = [r for runs in by_healer.values() for r in runs]
        rows[row] = SummaryRow(dense=mean_std(dense), cells=cells, dense_zero_shot=zero_shot_means(everyone, "dense"))
    return rows


def _cell(runs: list[dict[str, Any]], headline: Headline) -> HealerCell:
    """The seeds of one healer label in one row, summarized."""
    timed = [r for r in runs if healing_was_timed(r)]
    speedups = [speedup for speedup in map(healed_speedup, runs) if speedup is not None]
    return HealerCell(
        value=mean_std([r["accuracy"]["healed"][headline.key] for r in runs]),
        ratio=mean_std([healed_ratio(r, headline) for r in runs]),
        top1=mean_std([r["accuracy"]["healed"]["top1"] for r in runs]),
        recovery=mean_std([r["recovery"] for r in runs]),
        heal_seconds=mean_std([heal_seconds(r) for r in runs]),
        seeds=sorted(r["seed"] for r in runs),
        labels_used=any(r["calibration"].get("labels_used") for r in runs),
        healer=runs[0]["healer"]["name"],
        epochs=runs[0]["healer"].get("epochs"),
        speedup=mean_std(speedups) if speedups else None,
        parameters=runs[0].get("sparsity", {}).get("remaining_parameters"),
        # the seeds with a heal time: both axes of recovery_vs_heal_time.png, from the same runs
        timed=TimedPoint(seconds=mean_std([heal_seconds(r) for r in timed]),
                         ratio=mean_std([healed_ratio(r, headline) for r in timed])) if timed else None,
        loss_curve=mean_loss_curve(runs),
        zero_shot=zero_shot_means(runs, "healed"),
    )


def zero_shot_means(runs: list[dict[str, Any]], model: str) -> dict[str, MeanStd] | None:
    """Mean ± std over the runs of `model`'s score (percent) per "task metric" of their lm-eval tasks."""
    scores = [r["zero_shot"]["models"][model] for r in runs if r.get("zero_shot")]
    if not scores:
        return None
    keys = dict.fromkeys(f"{task} {metric}" for score in scores for task, metrics in score.items() for metric in metrics)
    return {key: mean_std([100 * score[key.split(" ")[0]][key.split(" ")[1]] for score in scores
                           if key.split(" ")[1] in score.get(key.split(" ")[0], {})]) for key in keys}


def zero_shot_table(rows: Rows) -> tuple[list[str], list[list[str]]]:
    """`starfish report`'s zero-shot table: a line per row's dense model and per healer, a column per task metric."""
    keys = list(dict.fromkeys(key for row in rows.values() for key in (row.dense_zero_shot or {})))
    body = []

    def text(values: dict[str, MeanStd] | None, key: str, seeds: int) -> str:
        if not values or key not in values:
            return "–"
        mean, std = values[key]
        return f"{mean:.2f}" + (f" ± {std:.2f}" if seeds > 1 else "")

    for (pruner, pattern, sparsity), row in rows.items():
        if row.dense_zero_shot is None:
            continue
        body.append([pruner, pattern, f"{sparsity:.2f}", "dense", *(text(row.dense_zero_shot, key, 1) for key in keys)])
        body += [[pruner, pattern, f"{sparsity:.2f}", label, *(text(cell.zero_shot, key, len(cell.seeds)) for key in keys)]
                 for label, cell in row.cells.items()]
    return ["pruner", "pattern", "sparsity", "model", *keys], body


def mean_loss_curve(runs: list[dict[str, Any]]) -> list[float] | None:
    """The healing loss at each optimizer step, averaged over the runs that recorded one (up to the shortest
    of them: seeds of one setting take the same steps); None where none did (healer=none, older reports)."""
    histories = [r.get("healing", {}).get("loss_history") for r in runs]
    histories = [history for history in histories if history]
    if not histories:
        return None
    return [sum(values) / len(values) for values in zip(*histories)]


def healed_speedup(report: dict[str, Any]) -> float | None:
    """Healed images/s ÷ dense at the evaluation's batch, from the report's speed section (eval.speed); a language
    model's prefill tokens/s ÷ dense."""
    speed = report.get("speed")
    if not speed:
        return None
    if speed.get("generation"):
        return speed["generation"]["models"]["healed"]["prefill_vs_dense"]
    return speed["models"]["healed"]["vs_dense"][str(speed["batch_sizes"][-1])]


def _cell_text(cell: HealerCell) -> str:
    (mean, std), (recovery, _) = cell.value, cell.ratio
    marker = " (labels)" if cell.labels_used else ""
    spread = f" ± {std:.2f}" if len(cell.seeds) > 1 else ""  # one seed has no spread to show
    return f"{mean:.2f}{spread} ({recovery:.3f}){marker}"


def table_rows(rows: Rows) -> tuple[list[str], list[list[str]]]:
    labels = healer_labels(rows)
    header = ["pruner", "pattern", "sparsity", "dense", *labels]
    body = []
    for (pruner, pattern, sparsity), row in rows.items():
        cells = [_cell_text(row.cells[label]) if label in row.cells else "–" for label in labels]
        body.append([pruner, pattern, f"{sparsity:.2f}", f"{row.dense[0]:.2f}", *cells])
    return header, body


def speed_table(rows: Rows, headline: Headline = TOP1) -> list[str]:
    """summary.md's trade-off table: the healed headline metric beside measured speed and size, where runs measured it."""
    lines = []
    for (pruner, pattern, sparsity), row in rows.items():
        for label, cell in row.cells.items():
            if cell.speedup:
                mean, std = cell.speedup
                parameters = f"{cell.parameters:,}" if cell.parameters else "–"
                lines.append(f"| {pruner} | {pattern} | {sparsity:.2f} | {label} | {_cell_text(cell)} | "
                             f"{mean:.2f}" + (f" ± {std:.2f}" if len(cell.seeds) > 1 else "") + f" | {parameters} |")
    if not lines:
        return []
    return ["Speed: healed images/s ÷ dense at the evaluation's batch (measured in each run's process), and the "
            "parameters that remain.", "",
            f"| pruner | pattern | sparsity | healer | healed {headline.title} ({headline.ratio.replace('_', ' ')}) "
            "| images/s ÷ dense | parameters |",
            "|---|---|---|---|---|---|---|", *lines, ""]


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
    tasks_header, tasks_body = zero_shot_table(rows)
    if tasks_body:
        markdown += ["Zero-shot tasks (lm-eval, percent; mean ± std over seeds):", "",
                     "| " + " | ".join(tasks_header) + " |", "|" + "---|" * len(tasks_header),
                     *("| " + " | ".join(line) + " |" for line in tasks_body), ""]
    write_text_atomically(written["summary.md"], "\n".join(markdown))
    _write_csv(written["summary.csv"], rows, headline)
    written |= _write_plots(root, rows, headline, written["accuracy_vs_sparsity.png"])
    _print_tables(console, root, len(reports), headline, header, body, tasks_header, tasks_body)
    return written


def _write_plots(root: Path, rows, headline, accuracy_plot: Path) -> dict[str, Path]:
    """The plots the rows have data for; the files written, by name."""
    plot_accuracy_vs_sparsity(rows, accuracy_plot, headline)
    written = {}
    if any(cell.speedup for row in rows.values() for cell in row.cells.values()):
        written["accuracy_vs_speed.png"] = root / "accuracy_vs_speed.png"
        plot_accuracy_vs_speed(rows, written["accuracy_vs_speed.png"], headline)
    if has_budget_sweep(rows):
        written["recovery_vs_time.png"] = root / "recovery_vs_time.png"
        plot_recovery_vs_time(rows, written["recovery_vs_time.png"], headline)
    if any(cell.timed for row in rows.values() for cell in row.cells.values()):
        written["recovery_vs_heal_time.png"] = root / "recovery_vs_heal_time.png"
        plot_recovery_vs_heal_time(rows, written["recovery_vs_heal_time.png"], headline)
    if any(cell.loss_curve for row in rows.values() for cell in row.cells.values()):
        written["healing_curves.png"] = root / "healing_curves.png"
        plot_healing_curves(rows, written["healing_curves.png"])
    return written


def _print_tables(console: Console | None, root: Path, runs: int, headline, header, body, tasks_header,
                  tasks_body) -> None:
    table = Table(title=f"starfish sweep: {root} ({runs} runs) — healed {headline.title} mean ± std "
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
    if tasks_body:
        tasks = Table(title="zero-shot tasks (lm-eval, percent)")
        for column in tasks_header:
            tasks.add_column(escape(column), justify="left" if column in ("pruner", "pattern", "model") else "right")
        for line in tasks_body:
            tasks.add_row(*map(escape, line))
        console.print(tasks)


def _write_csv(path: Path, rows: Rows, headline: Headline = TOP1) -> None:
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
                line = [pruner, pattern, sparsity, f"{row.dense[0]:.4f}"]
                for label in labels:
                    cell = row.cells.get(label)
                    std = f"{cell.value[1]:.4f}" if cell and len(cell.seeds) > 1 else ""
                    seconds = f"{cell.timed.seconds[0]:.2f}" if cell and cell.timed else ""
                    line += ([f"{cell.value[0]:.4f}", std, f"{cell.ratio[0]:.4f}", len(cell.seeds), seconds]
                             if cell else ["", "", "", "", ""])
                writer.writerow(line)

    write_atomically(path, write)
