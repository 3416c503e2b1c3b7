"""Metrics and the resolved config as one Weights & Biases run, offline by default (`wandb sync` later)."""

from pathlib import Path
from typing import Any, Literal

from starfish_cli.tracking.base import LOGGERS, MetricLogger, files_under, missing_extra


@LOGGERS.register("wandb")
class WandbLogger(MetricLogger):
    def __init__(self, run_dir: str | Path = ".", run_label: str | None = None, project: str = "starfish",
                 mode: Literal["offline", "online", "disabled"] = "offline", entity: str | None = None):
        try:
            import wandb
        except ImportError as error:
            raise missing_extra("wandb", "wandb") from error
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(project=project, entity=entity, mode=mode, dir=str(self.run_dir),
                               name=run_label or str(run_dir), reinit=True)
        self._closed = False

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._run.log({name: float(value) for name, value in metrics.items()}, step=step)

    def log_params(self, params: dict[str, Any]) -> None:
        self._run.config.update(params, allow_val_change=True)

    def close(self, failed: bool = False) -> None:
        if not self._closed:
            self._closed = True
            self._run.finish(exit_code=1 if failed else 0)

    def written(self) -> list[Path]:
        return files_under(self.run_dir / "wandb")
