"""The rows of a sweep summary (a typed cell per healer label) and the headline metric they compare."""

import re
from dataclasses import dataclass

RECOVERY_TARGET = 0.97

MeanStd = tuple[float, float]  # (mean, sample std) over seeds
RowKey = tuple[str, str, float]  # (pruner label, pattern, sparsity)


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


@dataclass(frozen=True)
class TimedPoint:
    """The seeds of a cell with a heal time: both axes of recovery_vs_heal_time.png, from the same runs."""

    seconds: MeanStd
    ratio: MeanStd


@dataclass(frozen=True)
class HealerCell:
    """One healer label in one row of the table: mean/std over its seeds of the headline metric (`value`,
    `ratio`), of top-1, recovery and heal time, and what the runs say about themselves."""

    value: MeanStd
    ratio: MeanStd
    top1: MeanStd
    recovery: MeanStd
    heal_seconds: MeanStd
    seeds: list[int]
    labels_used: bool
    healer: str  # the healer's name, without options
    epochs: int | None
    speedup: MeanStd | None  # healed ÷ dense images/s, where the runs measured it
    parameters: int | None  # remaining parameters, where the report counts them
    timed: TimedPoint | None
    loss_curve: list[float] | None = None  # healing loss per optimizer step, mean over the seeds that have one
    zero_shot: dict[str, MeanStd] | None = None  # "task metric" → healed score in percent, where runs had eval.tasks


@dataclass(frozen=True)
class SummaryRow:
    """A (pruner, pattern, sparsity) row: the dense headline metric and a cell per healer label."""

    dense: MeanStd
    cells: dict[str, HealerCell]
    dense_zero_shot: dict[str, MeanStd] | None = None  # "task metric" → the dense model's score in percent


Rows = dict[RowKey, SummaryRow]


def _natural(label: str) -> tuple:
    """Sort key that puts numbers in numeric order: starfish[epochs=30] before starfish[epochs=100]."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", label))


def healer_labels(rows: Rows) -> list[str]:
    """Every healer label of the table, by name, variants after their healer."""
    return sorted({label for row in rows.values() for label in row.cells}, key=_natural)
