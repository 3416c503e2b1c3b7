"""Metrics as TensorBoard scalars, in event files under the run folder (`tensorboard --logdir outputs`)."""

from pathlib import Path
from typing import Any

from starfish_cli.tracking.base import LOGGERS, MetricLogger, files_under, missing_extra


@LOGGERS.register("tensorboard")
class TensorboardLogger(MetricLogger):
    """Scalars without a step are logged at step 0; the parameters as one text entry."""

    def __init__(self, run_dir: str | Path = ".", subdir: str = "tensorboard"):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise missing_extra("tensorboard", "track") from error
        self.log_dir = Path(run_dir) / subdir
        self._writer = SummaryWriter(log_dir=str(self.log_dir))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for name, value in metrics.items():
            self._writer.add_scalar(name, float(value), global_step=0 if step is None else step)

    def log_params(self, params: dict[str, Any]) -> None:
        lines = "\n".join(f"    {key}: {value}" for key, value in params.items())  # indented: markdown code
        self._writer.add_text("params", lines, global_step=0)

    def close(self, failed: bool = False) -> None:
        self._writer.close()

    def written(self) -> list[Path]:
        return files_under(self.log_dir)
