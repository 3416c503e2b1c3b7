"""Metrics and the resolved config as one MLflow run; by default in a local store beside the run folders."""

import os
import time
from pathlib import Path
from typing import Any

from starfish_cli.tracking.base import LOGGERS, MetricLogger, missing_extra

BATCH = 100  # MLflow takes at most 100 params (and 1000 metrics) per request
MAX_VALUE = 6000  # a param value's length limit


@LOGGERS.register("mlflow")
class MlflowLogger(MetricLogger):
    def __init__(self, run_dir: str | Path = ".", output_root: str | Path = "outputs",
                 experiment_choice: str | None = None, run_label: str | None = None,
                 tracking_uri: str | None = None, experiment: str | None = None, run_name: str | None = None):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as error:
            raise missing_extra("mlflow", "track") from error
        uri = tracking_uri or f"file:{Path(output_root).resolve() / 'mlruns'}"
        if uri.startswith("file:"):  # MLflow 3 keeps its file store only on request; a local folder needs no server
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        name = experiment or experiment_choice or "default"
        found = self.client.get_experiment_by_name(name)
        experiment_id = found.experiment_id if found is not None else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment_id, run_name=run_name or run_label or str(run_dir)).info.run_id
        self._closed = False

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(name, float(value), now, step or 0) for name, value in metrics.items()]
        for start in range(0, len(entries), BATCH):
            self.client.log_batch(self.run_id, metrics=entries[start:start + BATCH])

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        entries = [Param(key, str(value)[:MAX_VALUE]) for key, value in params.items()]
        for start in range(0, len(entries), BATCH):
            self.client.log_batch(self.run_id, params=entries[start:start + BATCH])

    def close(self, failed: bool = False) -> None:
        if not self._closed:
            self._closed = True
            self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")
