"""Where a run's metrics go besides report.json: experiment trackers people already use (a CSV file,
TensorBoard, MLflow, Weights & Biases), each built from a `logger` config node, several at once."""

from starfish_cli.tracking.base import LOGGERS, MetricLogger, MetricLoggers, missing_extra
from starfish_cli.tracking.metrics import eval_metrics, flatten, heal_losses, sparsity_metrics
from starfish_cli.tracking import csv_logger, mlflow_logger, tensorboard_logger, wandb_logger  # noqa: F401  registers them

__all__ = ["LOGGERS", "MetricLogger", "MetricLoggers", "eval_metrics", "flatten", "heal_losses", "missing_extra",
           "sparsity_metrics"]
