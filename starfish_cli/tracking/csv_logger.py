"""Metrics as rows of a CSV file in the run folder (step, name, value), written atomically at close."""

import csv
import io
from pathlib import Path
from typing import Any

from starfish_cli.runtime.atomic import write_text_atomically
from starfish_cli.tracking.base import LOGGERS, MetricLogger

COLUMNS = ("step", "name", "value")


@LOGGERS.register("csv")
class CsvLogger(MetricLogger):
    """The run's parameters are not repeated here: config.yaml beside it holds them."""

    def __init__(self, run_dir: str | Path = ".", filename: str = "metrics.csv"):
        self.path = Path(run_dir) / filename
        self._rows: list[tuple[int | None, str, float]] = []
        self._wrote = False

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._rows += [(step, name, float(value)) for name, value in metrics.items()]

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def close(self, failed: bool = False) -> None:
        if failed or self._wrote:
            return  # a failed run leaves no metrics file
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(("" if step is None else step, name, repr(value)) for step, name, value in self._rows)
        write_text_atomically(self.path, text.getvalue())
        self._wrote = True

    def written(self) -> list[Path]:
        return [self.path] if self._wrote else []


def read_metrics(path: str | Path) -> list[tuple[int | None, str, float]]:
    """The rows of a metrics.csv: (step or None, name, value)."""
    with open(path, newline="") as handle:
        return [(int(row["step"]) if row["step"] else None, row["name"], float(row["value"]))
                for row in csv.DictReader(handle)]
