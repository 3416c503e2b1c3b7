"""The interface every metric logger has, the registry of them, and a group that fans out to several."""

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from starfish_cli.registry import Registry
from starfish_cli.runtime.errors import StarfishError


class MetricLogger:
    """Scalars by name (with an optional step), the run's parameters, and a close that says how the run
    ended. `written()` names the files it made in the run folder, so that a failed run removes them."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        raise NotImplementedError

    def log_params(self, params: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self, failed: bool = False) -> None:
        raise NotImplementedError

    def written(self) -> list[Path]:
        return []


LOGGERS: Registry[MetricLogger] = Registry("logger")


def missing_extra(library: str, extra: str) -> StarfishError:
    return StarfishError(f"logger needs {library}, which is not installed: pip install 'starfish-cli[{extra}]'")


def files_under(folder: Path) -> list[Path]:
    return sorted(path for path in Path(folder).rglob("*") if path.is_file()) if Path(folder).is_dir() else []


class MetricLoggers(MetricLogger):
    """Several loggers as one; closing twice closes once."""

    def __init__(self, loggers: Iterable[MetricLogger] = ()):
        self.loggers = list(loggers)
        self._closed = False

    @classmethod
    def build(cls, nodes: Mapping[str, Mapping[str, Any]] | None, **run: Any) -> "MetricLoggers":
        """One logger per node of `cfg.logger` (`{csv: {name: csv, …}, …}`); `run` holds the run-wide
        values a logger may take (run_dir, output_root, experiment_choice, run_label)."""
        return cls(LOGGERS.build(node, **run) for node in (nodes or {}).values() if node is not None)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if metrics:
            for logger in self.loggers:
                logger.log_metrics(metrics, step)

    def log_params(self, params: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.log_params(params)

    def close(self, failed: bool = False) -> None:
        if not self._closed:
            self._closed = True
            for logger in self.loggers:
                logger.close(failed)

    def written(self) -> list[Path]:
        return [path for logger in self.loggers for path in logger.written()]
