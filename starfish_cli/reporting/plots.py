"""The plots of a sweep summary (accuracy vs sparsity, recovery vs healing time, accuracy vs speed, healing
curves) and of one run's report.md (healing loss per step, per-block alignment with the dense model)."""

import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from starfish_cli.runtime.atomic import write_atomically
from starfish_cli.reporting.rows import TOP1, Headline, RowKey, Rows, SummaryRow, healer_labels


def budget_curves(row: SummaryRow) -> dict[str, list[tuple[float, float, float, int | None]]]:
    """A row's healing-budget curves: for each healer setting (`budget_group`: the label without `epochs`) held at
    more than one budget, its (heal seconds, ratio, ratio std, epochs) points in order of time. Two recipes of one
    healer (e.g. the reference and `extreme_90`) are two curves, never one line through both."""
    curves = defaultdict(list)
    for label, cell in row.cells.items():
        curves[budget_group(label)].append((cell.heal_seconds[0], cell.ratio[0], cell.ratio[1], cell.epochs))
    return {group: sorted(points) for group, points in curves.items() if len(points) > 1}


def has_budget_sweep(rows: Rows) -> bool:
    return any(budget_curves(row) for row in rows.values())


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


def _panel_grid(plt, panels: int):
    """A figure of `panels` panels, at most three a line; the spare panels of the last line hidden."""
    columns = min(panels, 3)
    grid_rows = math.ceil(panels / columns)
    figure, axes = plt.subplots(grid_rows, columns, figsize=(5 * columns, 4.5 * grid_rows), squeeze=False)
    for axis in axes.ravel()[panels:]:
        axis.set_visible(False)
    return figure, list(axes.ravel()[:panels])


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
        axis.set_title(panel_title(f"{pruner} ({pattern}), dense {dense:.1f}{headline.unit}"), fontsize=10)
        axis.set_xlabel("sparsity of prunable weights")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{headline.title} (mean ± std over seeds)")
    _shared_legend(figure, axes[0])
    _save(figure, path)
    plt.close(figure)


def plot_recovery_vs_time(rows: Rows, path: Path, headline: Headline = TOP1) -> None:
    plt = _pyplot()
    swept = [k for k, row in rows.items() if budget_curves(row)]
    groups = sorted({group for k in swept for group in budget_curves(rows[k])})
    colours = _colours(groups)
    figure, axes = plt.subplots(1, len(swept), figsize=(5 * len(swept), 4.5), squeeze=False)
    for axis, key in zip(axes[0], swept):
        for group, points in sorted(budget_curves(rows[key]).items()):
            axis.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                          marker="o", capsize=3, label=group, color=colours[group])
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
    from matplotlib.ticker import LogFormatter  # matplotlib is imported with the first plot (_pyplot)

    # plain numbers (14.2, 30) on every tick: scientific notation on the minor ticks of a range narrower than a
    # decade (1.42×10¹ …) runs the labels into each other
    plain = LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5))
    axis.xaxis.set_major_formatter(plain)
    axis.xaxis.set_minor_formatter(plain)
    axis.set_title(panel_title(f"{key[0]} ({key[1]}) at sparsity {key[2]:.2f}"), fontsize=10)
    axis.set_xlabel("healing wall time, s (log)")
    axis.set_ylabel(headline.ratio_axis)
    axis.grid(alpha=0.3)


def panel_title(text: str, width: int = 45) -> str:
    """A panel's title in lines of at most about `width` characters, broken after commas and spaces, so that long
    pruner labels (`structured[compensate=least_squares,criterion=output]`) do not run into the next panel."""
    lines = [""]
    for piece in re.split(r"(?<=[, ])", text):
        if lines[-1] and len(lines[-1]) + len(piece) > width:
            lines.append("")
        lines[-1] += piece
    return "\n".join(line.rstrip() for line in lines)


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
    figure, used = _panel_grid(plt, len(panels))
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


def plot_healing_curves(rows: Rows, path: Path) -> None:
    """Healing loss against optimizer step (log), a panel per row of the table: per healer label with a loss
    history, the mean curve over its seeds, in the label's colour of the other plots."""
    plt = _pyplot()
    colours = _colours(healer_labels(rows))
    panels = [key for key, row in rows.items() if any(cell.loss_curve for cell in row.cells.values())]
    figure, axes = _panel_grid(plt, len(panels))
    for axis, key in zip(axes, panels):
        for label, cell in rows[key].cells.items():
            if cell.loss_curve:
                axis.plot(range(1, len(cell.loss_curve) + 1), cell.loss_curve, color=colours[label], linewidth=1.2,
                          label=label)
        axis.set_yscale("log")
        axis.set_title(panel_title(f"{key[0]} ({key[1]}) at sparsity {key[2]:.2f}"), fontsize=10)
        axis.set_xlabel("optimizer step")
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.set_ylabel("healing loss (mean over seeds, log)")
        axis.grid(alpha=0.3, which="both")
    _shared_legend(figure, axes)
    _save(figure, path)
    plt.close(figure)


def _moving_average(values: list[float], window: int) -> list[float]:
    """The mean of each value and the `window - 1` before it (fewer at the start)."""
    sums, averages = [0.0], []
    for i, value in enumerate(values):
        sums.append(sums[-1] + value)
        averages.append((sums[-1] - sums[max(0, i + 1 - window)]) / min(i + 1, window))
    return averages


def plot_healing_loss(healing: dict[str, Any], path: Path) -> None:
    """One run's healing loss at each optimizer step (log), with a moving average where the steps are many and
    gradual healing's stage boundaries marked with their sparsity."""
    plt = _pyplot()
    losses = healing["loss_history"]
    steps = range(1, len(losses) + 1)
    figure, axis = plt.subplots(figsize=(6.5, 4))
    window = len(losses) // 50
    if window > 1:  # many noisy steps: the raw values faint, their trend on top
        axis.plot(steps, losses, color="tab:blue", linewidth=0.8, alpha=0.3, label="per step")
        axis.plot(steps, _moving_average(losses, window), color="tab:blue", linewidth=1.5,
                  label=f"mean of {window} steps")
    else:
        axis.plot(steps, losses, color="tab:blue", linewidth=1.5, marker="o" if len(losses) <= 30 else None,
                  markersize=3, label="per step")
    end = 0
    for number, stage in enumerate(healing.get("stages") or []):
        if number:
            axis.axvline(end + 0.5, color="grey", linestyle="--", linewidth=1)
        axis.annotate(f"sparsity {stage['sparsity']:g}", (end + 1, 1), xycoords=("data", "axes fraction"),
                      xytext=(2, -10), textcoords="offset points", fontsize=7, color="dimgrey")
        end += stage["steps"]
    if all(loss > 0 for loss in losses):
        axis.set_yscale("log")
    axis.set_xlabel("optimizer step")
    axis.xaxis.get_major_locator().set_params(integer=True)  # a run of a few steps has no step 0.98
    if len(losses) == 1:
        axis.set_xlim(0, 2)  # room for the integer ticks around the one step
    axis.set_ylabel("healing loss" + (" (log)" if axis.get_yscale() == "log" else ""))
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8, loc="lower left")  # a falling loss leaves that corner free; the stage names are on top
    figure.tight_layout()
    _save(figure, path)
    plt.close(figure)


def plot_block_alignment(accuracy: dict[str, Any], path: Path) -> None:
    """Each block's mean token cosine with the dense model's output, before and after healing."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4))
    for name, colour in (("pruned", "tab:red"), ("healed", "tab:green")):
        cosines = accuracy.get(name, {}).get("block_cosine") or []
        if cosines:
            axis.plot(range(len(cosines)), cosines, marker="o", markersize=4, color=colour, label=name)
    axis.axhline(1.0, color="black", linestyle="--", linewidth=1, label="dense")
    axis.set_xlabel("block")
    axis.set_ylabel("mean token cosine with dense")
    axis.xaxis.get_major_locator().set_params(integer=True)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    _save(figure, path)
    plt.close(figure)
