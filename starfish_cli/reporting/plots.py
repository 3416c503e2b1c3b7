"""The plots of a sweep summary: accuracy vs sparsity, recovery vs healing time, accuracy vs speed."""

import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from starfish_cli.runtime.atomic import write_atomically
from starfish_cli.reporting.rows import TOP1, Headline, RowKey, Rows, SummaryRow, healer_labels


def _budget_swept(row: SummaryRow) -> set[str]:
    """Healers that a row holds at more than one setting (e.g. several `epochs`)."""
    names = [cell.healer for cell in row.cells.values()]
    return {name for name in names if names.count(name) > 1}


def has_budget_sweep(rows: Rows) -> bool:
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


def plot_accuracy_vs_sparsity(rows: Rows, path: Path, headline: Headline = TOP1) -> None:
    plt = _pyplot()
    panels = sorted({(pruner, pattern) for pruner, pattern, _ in rows})
    labels = healer_labels(rows)
    colours = _colours(labels)
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False, sharey=True)
    for axis, (pruner, pattern) in zip(axes[0], panels):
        keys = sorted(k for k in rows if k[:2] == (pruner, pattern))
        for label in labels:
            points = [(k[2], rows[k].cells[label]) for k in keys if label in rows[k].cells]
            if points:
                axis.errorbar([p[0] for p in points], [c.value[0] for _, c in points],
                              yerr=[c.value[1] for _, c in points], marker="o", capsize=3, label=label,
                              color=colours[label])
        dense = sum(rows[k].dense[0] for k in keys) / len(keys)
        axis.axhline(dense, color="black", linestyle="--", linewidth=1, label="dense")
        axis.set_title(f"{pruner} ({pattern}), dense {dense:.1f}{headline.unit}")
        axis.set_xlabel("sparsity of prunable weights")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{headline.title} (mean ± std over seeds)")
    _shared_legend(figure, axes[0])
    _save(figure, path)
    plt.close(figure)


def plot_recovery_vs_time(rows: Rows, path: Path, headline: Headline = TOP1) -> None:
    plt = _pyplot()
    swept = [k for k, row in rows.items() if _budget_swept(row)]
    healers = sorted({cell.healer for k in swept for cell in rows[k].cells.values()})
    colours = _colours(healers)
    figure, axes = plt.subplots(1, len(swept), figsize=(5 * len(swept), 4.5), squeeze=False)
    for axis, key in zip(axes[0], swept):
        by_healer = defaultdict(list)
        swept_healers = _budget_swept(rows[key])
        for cell in rows[key].cells.values():
            if cell.healer in swept_healers:
                by_healer[cell.healer].append((cell.heal_seconds[0], cell.ratio[0], cell.ratio[1], cell.epochs))
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


def _time_panel(axis, key: RowKey, headline: Headline) -> None:
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


def plot_recovery_vs_heal_time(rows: Rows, path: Path, headline: Headline = TOP1) -> None:
    """The headline ratio against healing wall time, a panel per row of the table that has timed runs: a point per
    healer label (mean ± std over the seeds with a heal time, in both axes, the label's colour of the other plots),
    the budgets of one healer setting (`budget_group`) joined in order of time."""
    plt = _pyplot()
    labels = healer_labels(rows)
    colours = _colours(labels)
    panels = [key for key, row in rows.items() if any(cell.timed for cell in row.cells.values())]
    columns = min(len(panels), 3)
    grid_rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(grid_rows, columns, figsize=(5 * columns, 4.5 * grid_rows), squeeze=False)
    used = list(axes.ravel()[:len(panels)])
    for axis in axes.ravel()[len(panels):]:
        axis.set_visible(False)
    for axis, key in zip(used, panels):
        cells = rows[key].cells
        timed = {label: cells[label].timed for label in labels if label in cells and cells[label].timed}
        curves = defaultdict(list)
        for label, point in timed.items():
            curves[budget_group(label)].append((point.seconds[0], point.ratio[0]))
        for points in curves.values():
            if len(points) > 1:
                points.sort()
                axis.plot([p[0] for p in points], [p[1] for p in points], color="grey", linewidth=1, alpha=0.7, zorder=1)
        for label, point in timed.items():
            axis.errorbar(point.seconds[0], point.ratio[0], xerr=point.seconds[1], yerr=point.ratio[1],
                          marker="o", capsize=3, linestyle="none", color=colours[label], label=label, zorder=2)
        _time_panel(axis, key, headline)
    _shared_legend(figure, used)
    _save(figure, path)
    plt.close(figure)


def plot_accuracy_vs_speed(rows: Rows, path: Path, headline: Headline = TOP1) -> None:
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
        for label, cell in row.cells.items():
            if not cell.speedup:
                continue
            axis.errorbar(cell.speedup[0], cell.value[0], xerr=cell.speedup[1], yerr=cell.value[1],
                          marker=markers.get(pruner.split("[")[0], "o"), color=colours[label], capsize=2,
                          linestyle="none", label=label)
            axis.annotate(pruner if pattern == "unstructured" else f"{pruner} {pattern}",
                          (cell.speedup[0], cell.value[0]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    dense = [row.dense[0] for row in rows.values()]
    axis.axhline(sum(dense) / len(dense), color="black", linestyle="--", linewidth=1, label="dense")
    axis.axvline(1.0, color="grey", linestyle=":", linewidth=1)
    axis.set_xlabel("images/s ÷ dense (measured, evaluation batch)")
    axis.set_ylabel(f"healed {headline.title} (mean ± std over seeds)")
    axis.grid(alpha=0.3)
    _shared_legend(figure, [axis])
    _save(figure, path)
    plt.close(figure)
